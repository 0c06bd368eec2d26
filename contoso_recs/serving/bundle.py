"""The serving bundle: what the online endpoint needs to answer a product view, as plain files.

A bundle is a folder with a small JSON manifest and NumPy arrays:

    manifest.json            model version, cutoff, scoring policy, counts, creation time
    product_ids.npy          (m,) str, sorted: the products that may be recommended
    product_vectors.npy      (m, d) float32, L2-normalised two-tower product vectors
    product_popularity.npy   (m,) float32, log(1 + distinct buyers in the last 4 weeks)
    popular_products.npy     (p,) int32, product positions, most popular first
    customer_ids.npy         (n,) str, sorted
    customer_vectors.npy     (n, d) float32, two-tower customer vectors at the bundle's data date
    owned_indptr.npy         (n + 1,) int64 } products each customer bought before, CSR rows
    owned_indices.npy        (nnz,) int32    } of product positions (the repurchase policy)

Ids are strings, whatever their type in the lake, because they are strings on the wire. Arrays
are memory-mapped when read, so a bundle with millions of customers opens in milliseconds.

Bundles are published side by side under one folder, next to a pointer file `current.json`
naming the live one; the pointer is replaced atomically (write, then rename), so a reader sees
the old bundle or the new one, never half of one. This module imports NumPy and the standard
library only: it runs unchanged inside the online endpoint.
"""

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from contoso_recs.files import write_text_atomically

MANIFEST = "manifest.json"
POINTER = "current.json"
FORMAT = 1
POPULAR_PRODUCTS = 300
ARRAYS = (
    "product_ids",
    "product_vectors",
    "product_popularity",
    "popular_products",
    "customer_ids",
    "customer_vectors",
    "owned_indptr",
    "owned_indices",
)
MEMORY_MAPPED = {"customer_ids", "customer_vectors", "owned_indptr", "owned_indices"}


@dataclass(frozen=True)
class Policy:
    """How a product view is scored.

    The query is `customer_weight * customer + product_weight * viewed product`; each product
    scores its cosine with the query plus `popularity_weight * log(1 + recent buyers)`. With
    `allow_repeats` False, products the customer bought before are never shown. The product
    page's values are `contoso_recs.serving.publish.DEFAULT_POLICY`; each bundle records its own
    in the manifest.
    """

    customer_weight: float = 1.0
    product_weight: float = 1.0
    popularity_weight: float = 0.0
    allow_repeats: bool = False

    @classmethod
    def from_json(cls, payload: dict) -> "Policy":
        return cls(**{k: payload[k] for k in asdict(cls()) if k in payload})


@dataclass(frozen=True)
class Bundle:
    """A serving bundle in memory (big arrays memory-mapped)."""

    path: Path
    manifest: dict
    policy: Policy
    product_ids: np.ndarray
    product_vectors: np.ndarray
    product_popularity: np.ndarray
    popular_products: np.ndarray
    customer_ids: np.ndarray
    customer_vectors: np.ndarray
    owned_indptr: np.ndarray
    owned_indices: np.ndarray

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])


def write_bundle(
    out_dir: str | Path,
    *,
    model_version: str,
    cutoff: str,
    policy: Policy,
    product_ids: np.ndarray,
    product_vectors: np.ndarray,
    product_popularity: np.ndarray,
    customer_ids: np.ndarray,
    customer_vectors: np.ndarray,
    owned_indptr: np.ndarray,
    owned_indices: np.ndarray,
) -> Path:
    """Write a bundle into `out_dir` (replaced if it exists) and return its path.

    Inputs may come in any order: ids are turned into strings and sorted, and the vector rows,
    popularity and owned products are reordered with them. `owned_indptr`/`owned_indices` are
    CSR rows over the given customers, holding positions in the given product order.
    """
    products = _as_strings(product_ids)
    customers = _as_strings(customer_ids)
    _check_unique(products, "product")
    _check_unique(customers, "customer")
    product_order = np.argsort(products, kind="stable")
    new_position = np.empty(len(products), dtype=np.int32)
    new_position[product_order] = np.arange(len(products), dtype=np.int32)
    customer_order = np.argsort(customers, kind="stable")

    vectors = _unit_rows(np.asarray(product_vectors, dtype=np.float32)[product_order])
    popularity = np.log1p(np.asarray(product_popularity, dtype=np.float32)[product_order])
    popular = np.argsort(-popularity, kind="stable")[:POPULAR_PRODUCTS].astype(np.int32)
    indptr, indices = _reorder_rows(
        np.asarray(owned_indptr, dtype=np.int64), np.asarray(owned_indices), customer_order
    )
    arrays = {
        "product_ids": products[product_order],
        "product_vectors": vectors,
        "product_popularity": popularity.astype(np.float32),
        "popular_products": popular,
        "customer_ids": customers[customer_order],
        "customer_vectors": np.asarray(customer_vectors, dtype=np.float32)[customer_order],
        "owned_indptr": indptr,
        "owned_indices": new_position[indices],
    }
    manifest = {
        "format": FORMAT,
        "model_version": model_version,
        "cutoff": cutoff,
        "policy": asdict(policy),
        "products": len(products),
        "customers": len(customers),
        "dimension": int(vectors.shape[1]),
        "owned_pairs": len(indices),
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "bundle_id": uuid.uuid4().hex,  # a bundle written again in the same folder is another
    }
    return _write_atomically(Path(out_dir), arrays, manifest)


def read_manifest(path: str | Path) -> dict:
    """What the bundle in `path` holds (its manifest), without its arrays."""
    return json.loads((Path(path) / MANIFEST).read_text())


def read_bundle(path: str | Path) -> Bundle:
    """The bundle in `path`; the big customer arrays are memory-mapped, the rest in memory."""
    folder = Path(path)
    manifest = read_manifest(folder)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"bundle {folder} has format {manifest.get('format')}, expected {FORMAT}")
    arrays = {
        name: np.load(folder / f"{name}.npy", mmap_mode="r" if name in MEMORY_MAPPED else None)
        for name in ARRAYS
    }
    return Bundle(
        path=folder,
        manifest=manifest,
        policy=Policy.from_json(manifest.get("policy", {})),
        **arrays,
    )


def publish(root: str | Path, bundle_dir: str | Path, model_version: str) -> Path:
    """Make `bundle_dir` (a folder under `root`) the live bundle: replace the pointer atomically."""
    root = Path(root)
    pointer = root / POINTER
    relative = Path(bundle_dir).resolve().relative_to(root.resolve())
    content = {"model_version": model_version, "bundle": str(relative)}
    return write_text_atomically(pointer, json.dumps(content))


def live_bundle_dir(model_dir: str | Path) -> Path:
    """The bundle a model folder serves, in either layout.

    Locally the folder holds published bundles and the pointer `current.json`; in an Azure ML
    deployment it holds one bundle, directly or as its only sub-folder.
    """
    folder = Path(model_dir)
    pointer = folder / POINTER
    if pointer.exists():
        return folder / json.loads(pointer.read_text())["bundle"]
    if (folder / MANIFEST).exists():
        return folder
    inner = [p for p in folder.iterdir() if (p / MANIFEST).exists()] if folder.is_dir() else []
    if len(inner) == 1:
        return inner[0]
    raise FileNotFoundError(f"no serving bundle in {folder} (no {POINTER} and no {MANIFEST})")


def _write_atomically(out: Path, arrays: dict[str, np.ndarray], manifest: dict) -> Path:
    """Write into a sibling temporary folder, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, values in arrays.items():
            np.save(staging / f"{name}.npy", values, allow_pickle=False)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _as_strings(ids: np.ndarray) -> np.ndarray:
    values = np.asarray(ids)
    if values.dtype.kind in "iu":
        return values.astype(str)
    return np.asarray([str(v) for v in values.tolist()], dtype=str) if len(values) else values


def _check_unique(ids: np.ndarray, what: str) -> None:
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{what} ids of a bundle must be unique")


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _reorder_rows(
    indptr: np.ndarray, indices: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CSR rows `order[0], order[1], ...` of (indptr, indices), as a new CSR pair."""
    lengths = np.diff(indptr)[order]
    new_indptr = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_indptr[1:])
    starts = np.repeat(indptr[:-1][order] - new_indptr[:-1], lengths)
    gather = starts + np.arange(new_indptr[-1], dtype=np.int64)
    return new_indptr, indices[gather]

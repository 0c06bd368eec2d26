"""Weekly email scoring: the product's `top_k` beside faiss `IndexFlatIP`, same vectors, same run.

`python -m benchmarks.batch_scoring` builds clustered two-tower vectors (2,000,000 customers and
50,000 products of 64 dimensions by default), times each method in its own process so that its
peak memory is its own, measures recall@5 against exact fp32 scoring on a sample of customers,
prints the figures as JSON and records them with `benchmarks.report.record("batch_scoring", ...)`.

The reference needs faiss-cpu (`pip install faiss-cpu`); it is not a dependency of the product.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.report import record

REPO_ROOT = Path(__file__).resolve().parent.parent
CENTRES = 200
# Per-dimension noise around a centre drawn from N(0, 1): same-centre vectors have a cosine of
# about 1 / (1 + NOISE**2) = 0.8, so each customer's best products are close to one another.
NOISE = 0.5
# Popularity of the centres (categories) falls off like 1 / rank**SKEW.
SKEW = 0.7
RECALL_SAMPLE = 20_000
K = 5
FLAGS_OF_INTEREST = [
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
]


def run(
    n_customers: int = 2_000_000,
    n_products: int = 50_000,
    dim: int = 64,
    seed: int = 0,
    threads: int | None = None,
) -> dict:
    """Time both methods on the same vectors and return the figures."""
    threads = threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="batch_scoring_") as scratch:
        folder = Path(scratch)
        customers, products = clustered_vectors(n_customers, n_products, dim, seed)
        np.save(folder / "customers.npy", customers)
        np.save(folder / "products.npy", products)
        del customers
        faiss_figures = measure_in_subprocess("faiss", folder, threads)
        product_figures = measure_in_subprocess("product", folder, threads)
        sample = np.random.default_rng(seed + 1).choice(n_customers, RECALL_SAMPLE, replace=False)
        sample.sort()
        customers = np.load(folder / "customers.npy", mmap_mode="r")
        truth = exact_top_k(np.asarray(customers[sample]), products, K)
        product_indices = np.load(folder / "product_indices.npy", mmap_mode="r")[sample]
        faiss_indices = np.load(folder / "faiss_indices.npy", mmap_mode="r")[sample]
    return {
        "description": "Top 5 products per customer for the weekly email: the product "
        "(`contoso_recs.recommender.batch_scoring.top_k`: bf16 screen with AVX512-BF16, group "
        "maxima, exact fp32 rescore of a shortlist) beside exact faiss `IndexFlatIP` search of "
        "all customers, on the same clustered, L2-normalised vectors with the same number of "
        "threads, each in its own process. Recall@5 is against exact numpy fp32 scoring of a "
        "random sample of customers.",
        "n_customers": n_customers,
        "n_products": n_products,
        "dim": dim,
        "k": K,
        "seed": seed,
        "threads": threads,
        "vectors": f"{CENTRES} Gaussian centres, popularity 1/rank^{SKEW}, noise {NOISE}, "
        "L2-normalised",
        "product_seconds": product_figures["seconds"],
        "faiss_seconds": faiss_figures["seconds"],
        "ratio": product_figures["seconds"] / faiss_figures["seconds"],
        "recall_at_5": recall(product_indices, truth),
        "faiss_recall_at_5": recall(faiss_indices, truth),
        "recall_sample": RECALL_SAMPLE,
        "product_customers_per_second": n_customers / product_figures["seconds"],
        # CPU time (user + sys) of the timed part; faiss's OpenMP threads also spin while waiting.
        "product_cpu_seconds": product_figures["cpu_seconds"],
        "faiss_cpu_seconds": faiss_figures["cpu_seconds"],
        # The machine is shared: the 1-minute load average as each method finished.
        "product_load_average": product_figures["load_average"],
        "faiss_load_average": faiss_figures["load_average"],
        "product_peak_rss_mib": product_figures["peak_rss_mib"],
        "product_peak_rss_above_inputs_mib": product_figures["peak_rss_mib"]
        - product_figures["inputs_rss_mib"],
        "faiss_peak_rss_mib": faiss_figures["peak_rss_mib"],
        "faiss_peak_rss_above_inputs_mib": faiss_figures["peak_rss_mib"]
        - faiss_figures["inputs_rss_mib"],
        "cpu_model": cpu_model(),
        "cpu_flags": " ".join(flag for flag in FLAGS_OF_INTEREST if flag in cpu_flags()),
        "torch_version": product_figures["torch_version"],
        "torch_cpu_capability": product_figures["torch_cpu_capability"],
        "faiss_version": faiss_figures["faiss_version"],
        "numpy_version": np.__version__,
    }


def clustered_vectors(
    n_customers: int, n_products: int, dim: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Customers and products around shared, unevenly popular centres, L2-normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, dim), dtype=np.float32)
    popularity = 1.0 / np.arange(1, CENTRES + 1) ** SKEW
    popularity /= popularity.sum()
    return (
        around_centres(rng, centres, popularity, n_customers),
        around_centres(rng, centres, popularity, n_products),
    )


def around_centres(
    rng: np.random.Generator, centres: np.ndarray, popularity: np.ndarray, count: int
) -> np.ndarray:
    vectors = np.empty((count, centres.shape[1]), dtype=np.float32)
    for start in range(0, count, 262_144):
        stop = min(start + 262_144, count)
        chosen = rng.choice(len(centres), stop - start, p=popularity)
        noise = rng.standard_normal((stop - start, centres.shape[1]), dtype=np.float32)
        block = centres[chosen] + np.float32(NOISE) * noise
        vectors[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return vectors


def exact_top_k(customers: np.ndarray, products: np.ndarray, k: int) -> np.ndarray:
    """Exact fp32 top k by numpy, a block of customers at a time."""
    found = np.empty((len(customers), k), dtype=np.int64)
    for start in range(0, len(customers), 2_000):
        scores = customers[start : start + 2_000] @ products.T
        found[start : start + 2_000] = np.argpartition(-scores, k, axis=1)[:, :k]
    return found


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true top k found, over all sampled customers."""
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth, strict=True))
    return hits / truth.size


def measure_in_subprocess(method: str, folder: Path, threads: int) -> dict:
    print(f"running {method} ...", file=sys.stderr, flush=True)
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.batch_scoring", "--measure", method, str(folder)],
        cwd=REPO_ROOT,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    print(f"{method}: {figures['seconds']:.1f} s", file=sys.stderr, flush=True)
    return figures


def measure(method: str, folder: Path) -> dict:
    """In a fresh process: load the vectors, run one method, save its indices.

    The method's libraries are imported before the vectors are loaded, so that the memory above
    the inputs is the method's working memory and its output.
    """
    threads = int(os.environ["OMP_NUM_THREADS"])
    search, versions = faiss_search(threads) if method == "faiss" else product_search(threads)
    customers = np.load(folder / "customers.npy")
    products = np.load(folder / "products.npy")
    inputs_rss = current_rss_mib()
    cpu_started, started = cpu_seconds(), time.perf_counter()
    indices = search(customers, products)
    seconds = time.perf_counter() - started
    figures = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu_started,
        "load_average": os.getloadavg()[0],
        "inputs_rss_mib": inputs_rss,
    }
    np.save(folder / f"{method}_indices.npy", indices)
    return {**figures, **versions}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def faiss_search(threads: int) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], dict]:
    """Exact inner-product search; filling the index (a copy of the products) is timed too."""
    import faiss

    faiss.omp_set_num_threads(threads)

    def search(customers: np.ndarray, products: np.ndarray) -> np.ndarray:
        index = faiss.IndexFlatIP(products.shape[1])
        index.add(products)
        return index.search(customers, K)[1]

    return search, {"faiss_version": faiss.__version__}


def product_search(threads: int) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], dict]:
    """The product's `top_k`, preparing the catalogue inside the timed part."""
    import torch

    from contoso_recs.recommender.batch_scoring import top_k

    torch.set_num_threads(threads)

    def search(customers: np.ndarray, products: np.ndarray) -> np.ndarray:
        return top_k(customers, products, K)[0]

    versions = {
        "torch_version": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    return search, versions


def current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=2_000_000)
    parser.add_argument("--products", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-record", action="store_true", help="print the figures only")
    parser.add_argument("--measure", nargs=2, metavar=("METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        method, folder = args.measure
        figures = measure(method, Path(folder))
        print(json.dumps({**figures, "peak_rss_mib": peak_rss_mib()}))
        return
    figures = run(args.customers, args.products, args.dim, args.seed, args.threads)
    print(json.dumps(figures, indent=2))
    if not args.no_record:
        record("batch_scoring", figures)


if __name__ == "__main__":
    main()

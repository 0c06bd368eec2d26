"""Top-k products for millions of customers by brute-force two-tower scoring, on the CPU.

No Dagster here: this module runs as it is inside an Azure ML batch endpoint, one mini-batch of
customers at a time (`iter_top_k`), as well as on a whole customer table at once (`top_k`).

How it works, for one chunk of `chunk_rows` customers on one worker thread:

1. Screen in bf16. Each tile of `TILE_PRODUCTS` products is scored against the chunk with one bf16
   matmul (`torch.mm` on bf16 runs oneDNN's AVX512-BF16 `vdpbf16ps` kernels, accumulating in
   fp32). Customers enter as `[q, -t, 0]` and products as `[p, 1, 0]`, with a per-customer bound
   `t > |q| max|p|`, so the matmul yields `q.p - t`: strictly negative, and rounded to bf16 only
   once, close to zero where the best products lie (rounding error about 3e-4 on a normalised
   score instead of 1e-3 for `q.p` itself). Negative bf16 values order like their bit patterns
   read as int16, reversed, so every maximum below is a plain int16 minimum (`vpminsw`, six times
   faster than torch's bf16 max).
2. Keep group maxima, not scores. While a tile is in cache it collapses to the best key of every
   block of `BLOCK` products, and those to the best of every `FANOUT` blocks, `LEVELS` levels in
   all. The k best products lie in the k best blocks, which lie in the k best groups of blocks,
   and so on; so from the top level down, the best `k + oversample` groups are opened, leaving
   `(k + oversample) * BLOCK` shortlisted products per customer.
3. Rescore the shortlist in fp32. The shortlisted product vectors are gathered and scored exactly
   in fp32, excluded and padding products are dropped, and the k best are returned.

Accuracy: the returned scores are exact fp32 dot products. A product is missed only when bf16
rounding pushes its group out of a shortlist level; `oversample` buys the margin. Recall@5 against
exact fp32 scoring is measured in the tests and in `benchmarks/batch_scoring.py`. The bound `t` is
meant for vectors of moderate norm, such as the L2-normalised two-tower vectors.

Exclusions are exact: excluded products are masked to -inf in the bf16 tile, before any group
maximum, and again after the rescore, so they never appear. When fewer than k products are allowed
for a customer, the row is padded with index -1 and score -inf. Ties: products with equal scores
come in an unspecified order (the same on every run), and one tied with the k-th score may lose
its place to another.

Memory, besides the caller's inputs and the (n, k) outputs: each worker thread keeps one bf16
tile (`TILE_PRODUCTS x chunk_rows`, 2 MiB), the int16 group keys of its chunk (`m / BLOCK x
chunk_rows` and smaller levels, 14 MiB at 50,000 products) and one rescore batch (5 MiB); the
prepared catalogue takes about 6 bytes per product and dimension (20 MiB at 50,000 x 64). None of
it grows with the number of customers. Measured at 2,000,000 x 50,000 x 64 with 2 threads: the
peak is 181 MiB above the loaded inputs, 76 MiB of which are the outputs. Customer vectors that
are not float32 are copied once to float32.

Threads: `num_threads` worker threads (default `torch.get_num_threads()`) each score whole chunks
with single-threaded torch ops, so no small op waits at an OpenMP barrier and each core keeps its
own tile in cache. Workers set their own thread-local OpenMP count to 1; the caller's setting is
restored on the way out.
"""

import math
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

BLOCK = 4
FANOUT = 8
LEVELS = 3
SUPERBLOCK = BLOCK * FANOUT ** (LEVELS - 1)
TILE_PRODUCTS = 2048
RESCORE_ROWS = 256
DEFAULT_CHUNK_ROWS = 512
DEFAULT_OVERSAMPLE = 4
# The bias exceeds |q| max|p| by this factor, beyond bf16's rounding of q, p and the bias.
BOUND_MARGIN = 1.0 + 2.0**-6
# Added to the bias so that a zero customer vector still screens strictly below zero.
BOUND_FLOOR = 2.0**-100
NEG_INF = float("-inf")

_scratch_space = threading.local()


class SparseRows(Protocol):
    """Per-customer product positions in CSR form, e.g. a `scipy.sparse.csr_matrix`."""

    indptr: np.ndarray
    indices: np.ndarray


PerCustomer = SparseRows | tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class PreparedProducts:
    """The allowed products, padded to whole superblocks, ready for every chunk of customers."""

    vectors: torch.Tensor  # (m_pad, d) float32, zero rows past `count`
    screen: torch.Tensor  # (m_pad, even d + 1) bfloat16 `[p, 1, 0]`, see `_screen_queries`
    positions: torch.Tensor  # (m_pad,) int64: original product position, -1 for padding
    compact: np.ndarray  # (m_total,) int64: original position -> row in `vectors`, or -1
    count: int  # allowed products
    max_norm: float

    @property
    def padded(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]


@dataclass(frozen=True)
class ChunkExclusions:
    """One chunk's excluded (customer, product) cells, keyed two ways for fast lookups."""

    cells: np.ndarray  # sorted `product_row * chunk_rows + row`: positions in a score tile
    pairs: torch.Tensor  # sorted `row * padded + product_row`: to find excluded candidates

    @classmethod
    def of(
        cls, rows: np.ndarray, product_rows: np.ndarray, chunk_rows: int, padded: int
    ) -> "ChunkExclusions | None":
        if len(rows) == 0:
            return None
        cells = np.sort(product_rows * chunk_rows + rows)
        return cls(cells, torch.from_numpy(np.sort(rows * padded + product_rows)))


def prepare_products(
    product_vectors: np.ndarray, exclude_for_all: np.ndarray | None = None
) -> PreparedProducts:
    """Drop products excluded for everyone and lay the rest out for scoring."""
    vectors = _float32_matrix(product_vectors, "product_vectors")
    _check_finite(torch.from_numpy(vectors), "product_vectors")
    total = vectors.shape[0]
    allowed = np.arange(total) if exclude_for_all is None else _allowed(exclude_for_all, total)
    kept = vectors[allowed]
    padded = max(_round_up(len(allowed), SUPERBLOCK), SUPERBLOCK)
    table = torch.zeros(padded, vectors.shape[1], dtype=torch.float32)
    table[: len(allowed)] = torch.from_numpy(kept)
    positions = torch.full((padded,), -1, dtype=torch.int64)
    positions[: len(allowed)] = torch.from_numpy(allowed.astype(np.int64))
    compact = np.full(total, -1, dtype=np.int64)
    compact[allowed] = np.arange(len(allowed))
    max_norm = float(np.linalg.norm(kept, axis=1).max()) if len(allowed) else 0.0
    extra = torch.zeros(padded, _screen_width(vectors.shape[1]) - vectors.shape[1])
    extra[:, 0] = 1.0
    screen = torch.cat([table, extra], dim=1).bfloat16()
    return PreparedProducts(table, screen, positions, compact, len(allowed), max_norm)


def top_k(
    customer_vectors: np.ndarray,
    product_vectors: np.ndarray | PreparedProducts,
    k: int = 5,
    *,
    exclude: PerCustomer | np.ndarray | None = None,
    exclude_for_all: np.ndarray | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    oversample: int = DEFAULT_OVERSAMPLE,
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best products by dot product for each customer, best first.

    `exclude` is either per customer (a CSR matrix, or `(indptr, indices)`, of product positions
    over the n customers) or a boolean mask over the products, excluding those for everyone;
    `exclude_for_all` takes such a mask when `exclude` is per customer. Returns product positions
    (n, k) int32 and their fp32 scores (n, k) float32; slots beyond the allowed products hold -1
    and -inf.
    """
    per_customer, for_all = _split_exclusions(exclude, exclude_for_all)
    products = _prepared(product_vectors, for_all)
    customers = _float32_matrix(customer_vectors, "customer_vectors")
    with _worker_pool(num_threads) as pool:
        return _top_k_on(pool, customers, products, k, per_customer, chunk_rows, oversample)


def iter_top_k(
    batches: Iterable[np.ndarray | tuple[np.ndarray, PerCustomer | None]],
    product_vectors: np.ndarray | PreparedProducts,
    k: int = 5,
    *,
    exclude_for_all: np.ndarray | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    oversample: int = DEFAULT_OVERSAMPLE,
    num_threads: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`top_k` for each mini-batch of customers, preparing the catalogue once.

    Each batch is the customers' vectors, or a pair of those and their per-customer exclusions
    (CSR rows over the batch's customers). Yields `(indices, scores)` per batch, in order.
    """
    products = _prepared(product_vectors, exclude_for_all)
    with _worker_pool(num_threads) as pool:
        for batch in batches:
            vectors, per_customer = batch if isinstance(batch, tuple) else (batch, None)
            customers = _float32_matrix(vectors, "customer_vectors")
            yield _top_k_on(pool, customers, products, k, per_customer, chunk_rows, oversample)


def chunk_top_k(
    customers: torch.Tensor,
    products: PreparedProducts,
    k: int,
    shortlist: int,
    excluded: ChunkExclusions | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k (product positions, fp32 scores) for one chunk, keeping `shortlist` groups a level.

    Meant for a worker thread: it reuses that thread's scratch buffers (none of them returned).
    """
    levels = _screen_keys(customers, products, excluded)
    blocks = _shortlisted_blocks(levels, shortlist)
    indices, scores = [], []
    for start in range(0, customers.shape[0], RESCORE_ROWS):
        rows = slice(start, start + RESCORE_ROWS)
        part = _rescored_top_k(customers[rows], blocks[rows], start, products, k, excluded)
        indices.append(part[0])
        scores.append(part[1])
    return torch.cat(indices), torch.cat(scores)


def _top_k_on(
    pool: ThreadPoolExecutor,
    customers: np.ndarray,
    products: PreparedProducts,
    k: int,
    per_customer: PerCustomer | None,
    chunk_rows: int,
    oversample: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Chunks of customers spread over the pool's workers, each writing its rows of the result."""
    _check_arguments(customers, products, k, chunk_rows, oversample)
    n = customers.shape[0]
    indices = np.full((n, k), -1, dtype=np.int32)
    scores = np.full((n, k), NEG_INF, dtype=np.float32)
    if n == 0 or products.count == 0:
        return indices, scores
    csr = _csr(per_customer, n, len(products.compact))
    shortlist = k + oversample

    def score_chunk(start: int) -> None:
        stop = min(start + chunk_rows, n)
        chunk = torch.from_numpy(customers[start:stop])
        _check_finite(chunk, "customer_vectors")
        excluded = _chunk_exclusions(csr, start, stop, products) if csr is not None else None
        chunk_indices, chunk_scores = chunk_top_k(chunk, products, k, shortlist, excluded)
        indices[start:stop] = chunk_indices.numpy()
        scores[start:stop] = chunk_scores.numpy()

    for _ in pool.map(score_chunk, range(0, n, chunk_rows)):
        pass
    return indices, scores


def _screen_keys(
    customers: torch.Tensor, products: PreparedProducts, excluded: ChunkExclusions | None
) -> list[torch.Tensor]:
    """Per level, (groups, rows) int16 keys: the bf16 bits of each group's best `q.p - t`.

    Level 0 groups `BLOCK` products, each next level `FANOUT` groups of the one below. Every
    screened value is strictly negative, so a lower key is a better score, and -inf (masked
    products) is the worst key.
    """
    rows = customers.shape[0]
    queries = _screen_queries(customers, products.max_norm).t()
    tile = _scratch("tile", (min(TILE_PRODUCTS, products.padded), rows), torch.bfloat16)
    masked = excluded.cells if excluded is not None else None
    levels = []
    for level in range(LEVELS - 1):
        groups = products.padded // (BLOCK * FANOUT**level)
        levels.append(_scratch(f"level{level}", (groups, rows), torch.int16))
    for first in range(0, products.padded, TILE_PRODUCTS):
        last = min(first + TILE_PRODUCTS, products.padded)
        scores = torch.mm(products.screen[first:last], queries, out=tile[: last - first])
        _mask_tile(scores, first, last, products.count, masked, rows)
        below, size = scores.view(torch.int16), 1
        for level, keys in enumerate(levels):
            fanout = BLOCK if level == 0 else FANOUT
            size *= fanout
            span = keys[first // size : last // size]
            below = torch.amin(below.view(-1, fanout, rows), dim=1, out=span)
    top = levels[-1].view(-1, FANOUT, rows).amin(dim=1)
    return [*levels, top]


def _screen_queries(customers: torch.Tensor, max_norm: float) -> torch.Tensor:
    """(rows, width) bf16 `[q, -t, 0]`, against products `[p, 1, 0]`: the matmul gives `q.p - t`.

    The bound `t` is subtracted inside the matmul's fp32 accumulation, before the one rounding
    to bf16; a zero column, where needed, keeps the inner dimension even for bf16 pairs.
    """
    rows, dim = customers.shape
    bound = customers.norm(dim=1) * (max_norm * BOUND_MARGIN) + BOUND_FLOOR
    extra = torch.zeros(rows, _screen_width(dim) - dim)
    extra[:, 0] = -bound
    return torch.cat([customers, extra], dim=1).bfloat16()


def _screen_width(dim: int) -> int:
    """The vector dimension plus the bound column, rounded up to even."""
    return _round_up(dim + 1, 2)


def _mask_tile(
    tile: torch.Tensor, first: int, last: int, count: int, masked: np.ndarray | None, rows: int
) -> None:
    """Set padding rows and excluded (product, customer) cells of a score tile to -inf."""
    if last > count:
        tile[max(count - first, 0) :] = NEG_INF
    if masked is None:
        return
    low, high = np.searchsorted(masked, [first * rows, last * rows])
    if high > low:
        cells = torch.from_numpy(masked[low:high] - first * rows)
        tile.view(-1).index_fill_(0, cells, NEG_INF)


def _shortlisted_blocks(levels: list[torch.Tensor], shortlist: int) -> torch.Tensor:
    """(rows, shortlist) numbers of the blocks to rescore for each customer.

    The best `shortlist` groups at the top level are opened level by level, keeping the best
    `shortlist` groups each time.
    """
    top = levels[-1].t().contiguous()
    rows = top.shape[0]
    chosen = _best_columns(top, torch.arange(top.shape[1]).expand(rows, -1), shortlist)
    offsets = torch.arange(FANOUT)
    for keys in reversed(levels[:-1]):
        children = (chosen[:, :, None] * FANOUT + offsets).view(rows, -1)
        chosen = _best_columns(keys.t().gather(1, children), children, shortlist)
    return chosen


def _best_columns(keys: torch.Tensor, columns: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` columns (all, if fewer) with the lowest keys in each row."""
    if keys.shape[1] <= count:
        return columns
    best = torch.topk(keys, count, dim=1, largest=False, sorted=False).indices
    return columns.gather(1, best)


def _rescored_top_k(
    customers: torch.Tensor,
    blocks: torch.Tensor,
    first_row: int,
    products: PreparedProducts,
    k: int,
    excluded: ChunkExclusions | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact fp32 scores of the shortlisted products, then the k best as original positions."""
    rows, dim = customers.shape
    table = products.vectors.view(-1, BLOCK * dim)
    width = blocks.shape[1] * BLOCK
    gathered = _scratch("gathered", (rows * blocks.shape[1], BLOCK * dim), torch.float32)
    torch.index_select(table, 0, blocks.reshape(-1), out=gathered)
    terms = _scratch("terms", (rows, width, dim), torch.float32)
    torch.mul(gathered.view(rows, width, dim), customers[:, None, :], out=terms)
    scores = torch.sum(terms, dim=2, out=_scratch("scores", (rows, width), torch.float32))
    candidates = (blocks[:, :, None] * BLOCK + torch.arange(BLOCK)).view(rows, -1)
    scores.masked_fill_(candidates >= products.count, NEG_INF)
    if excluded is not None:
        pairs = _excluded_pairs(candidates, first_row, products.padded, excluded)
        scores.masked_fill_(pairs, NEG_INF)
    best_scores, order = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    best = products.positions[candidates.gather(1, order)]
    best = best.masked_fill(best_scores == NEG_INF, -1)
    if best.shape[1] < k:  # the whole catalogue is shortlisted and is smaller than k
        missing = k - best.shape[1]
        best = F.pad(best, (0, missing), value=-1)
        best_scores = F.pad(best_scores, (0, missing), value=NEG_INF)
    return best.to(torch.int32), best_scores


def _excluded_pairs(
    candidates: torch.Tensor, first_row: int, padded: int, excluded: ChunkExclusions
) -> torch.Tensor:
    """Which candidates (rows from `first_row` of the chunk) are excluded for their customer."""
    rows = torch.arange(first_row, first_row + candidates.shape[0])[:, None]
    keys = rows * padded + candidates
    found = torch.searchsorted(excluded.pairs, keys).clamp_(max=len(excluded.pairs) - 1)
    return excluded.pairs[found] == keys


def _chunk_exclusions(
    csr: tuple[np.ndarray, np.ndarray], start: int, stop: int, products: PreparedProducts
) -> ChunkExclusions | None:
    """The exclusions of customers start..stop that are still in the prepared catalogue."""
    indptr, indices = csr
    counts = np.diff(indptr[start : stop + 1])
    rows = np.repeat(np.arange(stop - start, dtype=np.int64), counts)
    product_rows = products.compact[indices[indptr[start] : indptr[stop]]]
    kept = product_rows >= 0
    return ChunkExclusions.of(rows[kept], product_rows[kept], stop - start, products.padded)


def _csr(
    per_customer: PerCustomer | None, customers: int, products: int
) -> tuple[np.ndarray, np.ndarray] | None:
    if per_customer is None:
        return None
    if isinstance(per_customer, tuple):
        indptr, indices = per_customer
    elif hasattr(per_customer, "indptr") and hasattr(per_customer, "indices"):
        indptr, indices = per_customer.indptr, per_customer.indices
    else:
        raise TypeError("exclude takes a CSR matrix, (indptr, indices) or a boolean product mask")
    indptr = np.asarray(indptr, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    if indptr.shape != (customers + 1,) or indptr[0] != 0 or indptr[-1] != len(indices):
        raise ValueError(f"exclusions need an indptr of {customers + 1} offsets over indices")
    if np.any(np.diff(indptr) < 0):
        raise ValueError("exclusion indptr must not decrease")
    if len(indices) and (indices.min() < 0 or indices.max() >= products):
        raise ValueError(f"excluded product positions must lie in [0, {products})")
    return indptr, indices


def _split_exclusions(
    exclude: PerCustomer | np.ndarray | None, exclude_for_all: np.ndarray | None
) -> tuple[PerCustomer | None, np.ndarray | None]:
    """(per-customer exclusions, mask for everyone) from `top_k`'s two arguments."""
    if isinstance(exclude, np.ndarray) and exclude.dtype == np.bool_:
        if exclude_for_all is not None:
            return None, np.asarray(exclude_for_all, dtype=bool) | exclude
        return None, exclude
    return exclude, exclude_for_all


def _prepared(
    product_vectors: np.ndarray | PreparedProducts, exclude_for_all: np.ndarray | None
) -> PreparedProducts:
    if isinstance(product_vectors, PreparedProducts):
        if exclude_for_all is not None:
            raise ValueError("apply exclude_for_all in prepare_products for prepared products")
        return product_vectors
    return prepare_products(product_vectors, exclude_for_all)


def _allowed(exclude_for_all: np.ndarray, total: int) -> np.ndarray:
    mask = np.asarray(exclude_for_all)
    if mask.dtype != np.bool_ or mask.shape != (total,):
        raise ValueError(f"exclude_for_all must be a boolean mask of {total} products")
    return np.flatnonzero(~mask)


def _float32_matrix(values: np.ndarray, name: str) -> np.ndarray:
    matrix = np.ascontiguousarray(values, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array, got shape {matrix.shape}")
    return matrix


def _check_finite(values: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} holds NaN or infinite values")


def _check_arguments(
    customers: np.ndarray, products: PreparedProducts, k: int, chunk_rows: int, oversample: int
) -> None:
    if customers.shape[1] != products.dim:
        raise ValueError(f"customer dim {customers.shape[1]} != product dim {products.dim}")
    if k < 1 or chunk_rows < 1 or oversample < 0:
        raise ValueError("k and chunk_rows must be positive and oversample non-negative")


def _scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A buffer reused by this thread: fresh pages for every chunk cost more than the work."""
    buffers = _scratch_space.__dict__.setdefault("buffers", {})
    size = math.prod(shape)
    buffer = buffers.get(name)
    if buffer is None or buffer.dtype != dtype or buffer.numel() < size:
        buffer = buffers[name] = torch.empty(size, dtype=dtype)
    return buffer[:size].view(shape)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@contextmanager
def _worker_pool(num_threads: int | None) -> Iterator[ThreadPoolExecutor]:
    """Worker threads that each run torch single-threaded; the caller's setting is restored."""
    caller_threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(
        num_threads or caller_threads, initializer=torch.set_num_threads, initargs=(1,)
    )
    try:
        yield pool
    finally:
        pool.shutdown()
        torch.set_num_threads(caller_threads)

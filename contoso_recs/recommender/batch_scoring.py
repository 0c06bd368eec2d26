"""Top-k products for millions of customers by brute-force two-tower scoring, on the CPU.

No Dagster here: this module runs as it is inside an Azure ML batch endpoint, one mini-batch of
customers at a time (`iter_top_k`), as well as on a whole customer table at once (`top_k`).

How it works, for one chunk of `chunk_rows` customers on one worker thread:

1. Screen in bf16. Product tiles of `TILE_PRODUCTS` rows are scored against the chunk with one
   bf16 matmul each (`F.linear`: AVX512-BF16 `vdpbf16ps` through oneDNN, fp32 accumulation). The
   bias subtracts a per-customer bound `t >= |q| max|p|` inside the matmul, so every screened
   score `q.p - t` is strictly negative and is rounded to bf16 only once, close to zero where the
   top products lie (about 4x finer than rounding `q.p` itself). Negative bf16 values order like
   their bit patterns read as int16, reversed, so the block maxima are plain int16 minima
   (`vpminsw`, six times faster than a bf16 max).
2. Keep block maxima, not scores. Each tile collapses at once to the maximum of every block of
   `BLOCK` consecutive products; those collapse again to maxima of superblocks of
   `BLOCKS_PER_SUPERBLOCK` blocks. The top-k products lie in the top-k blocks, which lie in the
   top-k superblocks, so the shortlist is the best `k + oversample` superblocks, then the best
   `k + oversample` blocks inside them: `(k + oversample) * BLOCK` products per customer.
3. Rescore the shortlist in fp32. The shortlisted product vectors are gathered and scored exactly
   in fp32, excluded products are dropped, and the k best are returned.

Accuracy: the returned scores are exact fp32 dot products, and a product is missed only when bf16
rounding (about 3e-4 on a score) pushes its block out of the shortlist; `oversample` buys the
margin. Recall@5 against exact fp32 scoring is measured in the tests and the benchmark.

Exclusions are exact: excluded products are masked before the block maxima and again after the
rescore, so they never appear. When fewer than k products are allowed for a customer the row is
padded with index -1 and score -inf. Ties: among equal fp32 scores on the shortlist the lower
product position comes first; a product tied with the k-th score may still lose its place to an
equal one outside the shortlist.

Memory: besides the inputs and the (n, k) outputs, each worker holds one bf16 score tile
(`TILE_PRODUCTS x chunk_rows`, 4 MiB by default), the int16 block maxima of its chunk
(`m / BLOCK x chunk_rows`, 6.1 MiB at 50,000 products) and one rescore batch (about 5 MiB); the
prepared catalogue adds 6 bytes per product and dimension. At the defaults, 2 threads and 50,000
products the peak is about 50 MiB above inputs and outputs, whatever the number of customers.

Threads: `num_threads` worker threads (default: `torch.get_num_threads()`) each score whole
chunks with single-threaded torch ops, so no op waits at an OpenMP barrier for a core that is
busy elsewhere. Workers set their own OpenMP thread count to 1; the caller's is left alone.
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
TILE_PRODUCTS = 4096
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
    screen: torch.Tensor  # (m_pad, d + 2) bfloat16 `[p, 1, 0]`, see `_screen_queries`
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
    screen = torch.cat([table, torch.ones(padded, 1), torch.zeros(padded, 1)], dim=1).bfloat16()
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
    """Top k (product positions, fp32 scores) for one chunk of customers."""
    keys = _screen_keys(customers, products, excluded)
    blocks = _shortlisted_blocks(keys, shortlist)
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
        excluded = _chunk_exclusions(csr, start, stop, products) if csr is not None else None
        chunk_indices, chunk_scores = chunk_top_k(chunk, products, k, shortlist, excluded)
        indices[start:stop] = chunk_indices.numpy()
        scores[start:stop] = chunk_scores.numpy()

    for _ in pool.map(score_chunk, range(0, n, chunk_rows)):
        pass
    return indices, scores


def _screen_keys(
    customers: torch.Tensor, products: PreparedProducts, excluded: ChunkExclusions | None
) -> torch.Tensor:
    """(blocks, rows) int16 keys: the bf16 bits of each block's best `q.p - t`; lower is better.

    Every screened value is strictly negative, so the int16 order is the reverse of the score
    order, and -inf (masked products) is the worst key.
    """
    rows = customers.shape[0]
    queries = _screen_queries(customers, products.max_norm)
    keys = _scratch("keys", (products.padded // BLOCK, rows), torch.int16)
    tile = _scratch("tile", (min(TILE_PRODUCTS, products.padded), rows), torch.bfloat16)
    masked = excluded.cells if excluded is not None else None
    for first in range(0, products.padded, TILE_PRODUCTS):
        last = min(first + TILE_PRODUCTS, products.padded)
        scores = torch.mm(products.screen[first:last], queries.t(), out=tile[: last - first])
        _mask_tile(scores, first, last, products.count, masked, rows)
        blocks = scores.view(torch.int16).view((last - first) // BLOCK, BLOCK, rows)
        torch.amin(blocks, dim=1, out=keys[first // BLOCK : last // BLOCK])
    return keys


def _screen_queries(customers: torch.Tensor, max_norm: float) -> torch.Tensor:
    """(rows, d + 2) bf16 `[q, -t, 0]`, against products `[p, 1, 0]`: the matmul gives `q.p - t`.

    The bound `t` is subtracted inside the matmul's fp32 accumulation, before the one rounding
    to bf16; the zero column keeps the inner dimension even for bf16 pairs.
    """
    bound = customers.norm(dim=1, keepdim=True) * (max_norm * BOUND_MARGIN) + BOUND_FLOOR
    padding = torch.zeros_like(bound)
    return torch.cat([customers, -bound, padding], dim=1).bfloat16()


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


def _shortlisted_blocks(keys: torch.Tensor, shortlist: int) -> torch.Tensor:
    """(rows, shortlist) numbers of the blocks to rescore for each customer.

    Block keys are collapsed `LEVELS - 1` times by `FANOUT`; the best groups at the top level
    are then opened level by level, keeping the best `shortlist` groups each time.
    """
    rows = keys.shape[1]
    levels = [keys]
    for level in range(1, LEVELS):
        groups = levels[-1].view(-1, FANOUT, rows)
        out = _scratch(f"level{level}", (groups.shape[0], rows), torch.int16)
        levels.append(torch.amin(groups, dim=1, out=out))
    top = levels.pop().t().contiguous()
    chosen = _best_columns(top, torch.arange(top.shape[1]).expand(rows, -1), shortlist)
    offsets = torch.arange(FANOUT)
    for level in reversed(levels):
        children = (chosen[:, :, None] * FANOUT + offsets).view(rows, -1)
        chosen = _best_columns(level.t().gather(1, children), children, shortlist)
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
    else:
        indptr, indices = per_customer.indptr, per_customer.indices
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
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return matrix


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

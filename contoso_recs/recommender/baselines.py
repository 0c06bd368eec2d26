"""The baselines every evaluation carries beside the model.

Each returns top-k product ids per customer over the whole catalogue; with `exclude` (customers x
products, 1 = already bought) those products are never shown, which is task B.
"""

import logging
from datetime import datetime

import numpy as np
import polars as pl
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from contoso_recs.recommender.data import before, order_counts, product_popularity
from contoso_recs.recommender.ranking import ProductIndex, customer_product_matrix, top_k_lists

log = logging.getLogger(__name__)

POPULARITY_DAYS = 28
ALS_FACTORS = 64
ALS_ITERATIONS = 15
ALS_REGULARIZATION = 0.05
ALS_ALPHA = 2.0


def popularity(
    bought: pl.DataFrame,
    cutoff: datetime,
    customer_ids: np.ndarray,
    index: ProductIndex,
    k: int,
    exclude: sp.csr_matrix | None = None,
) -> dict[int, list[int]]:
    """The products most customers bought in the 4 weeks before the cutoff, the same for all."""
    counts = product_popularity(bought, cutoff, POPULARITY_DAYS)
    scores = np.full(len(index), -np.inf, dtype=np.float32)
    positions = index.positions(counts["product_id"].to_numpy())
    known = positions >= 0
    scores[positions[known]] = counts["customers"].to_numpy()[known]
    return top_k_lists(
        lambda rows: np.tile(scores, (len(rows), 1)), customer_ids, index, k, exclude
    )


def buy_again(
    bought: pl.DataFrame, cutoff: datetime, customer_ids: np.ndarray, index: ProductIndex, k: int
) -> dict[int, list[int]]:
    """Each customer's own products, most orders first (the latest one breaks ties)."""
    counts = order_counts(bought, cutoff).with_columns(
        (
            pl.col("orders").cast(pl.Float64)
            + pl.col("last_at").dt.epoch("s").cast(pl.Float64) / 1e10
        ).alias("score")
    )
    matrix = customer_product_matrix(counts, customer_ids, index, "score")
    dense = _dense_rows(matrix, fill=-np.inf)
    return top_k_lists(dense, customer_ids, index, k)


def item_knn(
    bought: pl.DataFrame,
    cutoff: datetime,
    customer_ids: np.ndarray,
    index: ProductIndex,
    k: int,
    exclude: sp.csr_matrix | None = None,
) -> dict[int, list[int]]:
    """Products most co-purchased (cosine over customers) with the customer's own products.

    score(u, j) = sum over the customer's products i != j of cos(i, j), with cos computed on
    binary customer x product vectors. Computed without the product x product matrix:
    X_u D^-1/2 X^T X D^-1/2, minus the self-similarity of each owned product (exactly 1).
    """
    train = before(bought, cutoff).select("customer_id", "product_id").unique()
    everyone = np.unique(train["customer_id"].to_numpy())
    owned = customer_product_matrix(train, everyone, index)
    owned.data[:] = 1.0
    buyers = np.asarray(owned.sum(axis=0)).ravel()
    scaled = (owned @ sp.diags(1.0 / np.sqrt(np.maximum(buyers, 1.0)))).tocsr()
    mine = customer_product_matrix(train, customer_ids, index)
    mine.data[:] = 1.0
    mine_scaled = (mine @ sp.diags(1.0 / np.sqrt(np.maximum(buyers, 1.0)))).tocsr()

    def score(rows: np.ndarray) -> np.ndarray:
        via_customers = (mine_scaled[rows] @ owned.T).toarray()
        scores = np.asarray(via_customers @ scaled) - mine[rows].toarray()
        scores[:, buyers == 0] = -np.inf
        return scores

    return top_k_lists(score, customer_ids, index, k, exclude)


def als(
    bought: pl.DataFrame,
    cutoff: datetime,
    customer_ids: np.ndarray,
    index: ProductIndex,
    k: int,
    exclude: sp.csr_matrix | None = None,
    seed: int = 7,
) -> dict[int, list[int]]:
    """Implicit-feedback ALS (the `implicit` library) on orders per customer and product."""
    from implicit.cpu.als import AlternatingLeastSquares

    counts = order_counts(bought, cutoff).with_columns(
        (1.0 + ALS_ALPHA * pl.col("orders").cast(pl.Float64).log1p()).alias("confidence")
    )
    everyone = np.unique(np.concatenate([counts["customer_id"].to_numpy(), customer_ids]))
    matrix = customer_product_matrix(counts, everyone, index, "confidence")
    model = AlternatingLeastSquares(
        factors=ALS_FACTORS,
        regularization=ALS_REGULARIZATION,
        iterations=ALS_ITERATIONS,
        random_state=seed,
    )
    with threadpool_limits(1, "blas"):  # implicit runs its own threads; BLAS ones would fight
        model.fit(matrix, show_progress=False)
    rows_of = np.searchsorted(everyone, customer_ids)
    users = np.asarray(model.user_factors)[rows_of]
    items = np.asarray(model.item_factors)
    sold = np.asarray((matrix > 0).sum(axis=0)).ravel() > 0
    log.info("ALS fitted: %d customers x %d products", *matrix.shape)

    def score(rows: np.ndarray) -> np.ndarray:
        scores = users[rows] @ items.T
        scores[:, ~sold] = -np.inf
        return scores

    return top_k_lists(score, customer_ids, index, k, exclude)


def _dense_rows(matrix: sp.csr_matrix, fill: float):
    """A scorer reading rows of a sparse score matrix, `fill` where there is no entry."""

    def score(rows: np.ndarray) -> np.ndarray:
        block = matrix[rows]
        dense = np.full(block.shape, fill, dtype=np.float32)
        coo = block.tocoo()
        dense[coo.row, coo.col] = coo.data
        return dense

    return score

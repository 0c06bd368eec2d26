"""The baselines every evaluation carries beside the model.

Each returns top-k product ids per customer over the whole catalogue; with `exclude` (customers x
products, 1 = already bought) those products are never shown, which is task B.
"""

import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from contoso_recs.recommender.data import (
    before,
    decayed_history,
    order_counts,
    product_popularity,
)
from contoso_recs.recommender.ranking import (
    ProductIndex,
    Scorer,
    customer_product_matrix,
    top_k_lists,
)

log = logging.getLogger(__name__)

POPULARITY_DAYS = 28
ALS_FACTORS = 64
ALS_ITERATIONS = 15
ALS_REGULARIZATION = 0.05
ALS_ALPHA = 2.0
ALS_WEIGHTING = "log"
ALS_BM25_K1 = 100.0
ALS_BM25_B = 0.8
# Chosen on the validation weeks from 2017-10-30 and 2017-11-06 of The Complete Journey (both end
# by the earliest evaluation cutoff): NDCG@5 A .164 / B .0217, against .052 / .0205 for the
# plain binary cosine without smoothing.
KNN_SMOOTHING = 10.0
KNN_HALF_LIFE_DAYS = 42.0


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
    smoothing: float = KNN_SMOOTHING,
    half_life_days: float = KNN_HALF_LIFE_DAYS,
) -> dict[int, list[int]]:
    """Products most co-purchased with the customer's own products (item-based kNN).

    score(u, j) = sum over the customer's products i of strength(u, i) * sim(i, j), where the
    strength counts the customer's orders of i discounted by age (`half_life_days`) and sim is
    the smoothed cosine of `co_purchase_scorer`.
    """
    strongest = decayed_history(bought, cutoff, half_life_days, max_products=10**9)
    profile = customer_product_matrix(strongest, customer_ids, index, "strength")
    return top_k_lists(
        co_purchase_scorer(before(bought, cutoff), profile, index, smoothing),
        customer_ids,
        index,
        k,
        exclude,
    )


def co_purchase_scorer(
    bought: pl.DataFrame,
    profile: sp.csr_matrix,
    index: ProductIndex,
    smoothing: float,
    target_exponent: float = 0.5,
    via: str | None = None,
) -> Scorer:
    """Scores rows of `profile` (customers x catalogue product weights) by co-purchase.

    score(u, j) = sum over i of profile(u, i) * sim(i, j), with
    sim(i, j) = customers who bought both / ((buyers of i + s)^1/2 (buyers of j + s)^e): with
    e = 1/2 a cosine over customers (every customer in `bought` counts) in which the smoothing
    s keeps products with a handful of buyers from looking alike by chance; a larger exponent e
    favours products fewer customers buy. Computed as P S X^T X T (S, T diagonal, X the
    customers x products purchase matrix), a block of rows at a time, without the product x
    product matrix when there are fewer customers than products, through the products x products
    co-purchase counts X^T X otherwise (`via` forces "customers" or "products"; the result is
    the same). Products nobody bought score -inf.
    """
    pairs = bought.select("customer_id", "product_id").unique()
    everyone = np.unique(pairs["customer_id"].to_numpy())
    owners = customer_product_matrix(pairs, everyone, index)
    owners.data[:] = 1.0
    buyers = np.asarray(owners.sum(axis=0), dtype=np.float64).ravel()
    sold = buyers > 0
    smoothed = buyers + smoothing
    source = np.divide(1.0, np.sqrt(smoothed), out=np.zeros_like(smoothed), where=sold)
    target = np.divide(1.0, smoothed**target_exponent, out=np.zeros_like(smoothed), where=sold)
    weighted = (profile @ sp.diags(source.astype(np.float32))).tocsr()
    if (via or ("customers" if owners.shape[0] <= owners.shape[1] else "products")) == "products":
        # Many more customers than products (a national retailer): one products x products
        # co-purchase count matrix, instead of a dense row per customer for every block.
        co_bought = (owners.T @ owners).tocsr()

        def score(rows: np.ndarray) -> np.ndarray:
            scores = (weighted[rows] @ co_bought).toarray().astype(np.float32)
            scores *= target.astype(np.float32)
            scores[:, ~sold] = -np.inf
            return scores

        return score

    scaled_t = (owners @ sp.diags(target.astype(np.float32))).T.tocsr()

    def score(rows: np.ndarray) -> np.ndarray:
        via_customers = (weighted[rows] @ owners.T).toarray()
        scores = np.asarray((scaled_t @ via_customers.T).T, dtype=np.float32)
        scores[:, ~sold] = -np.inf
        return scores

    return score


@dataclass(frozen=True)
class AlsFactors:
    """Implicit-feedback ALS factors: `customers` in the order of the ids asked for (zeros for
    a customer with no order before the cutoff), `products` in catalogue order; a customer's
    preference for a product is their dot product. `sold` marks the products somebody bought
    before the cutoff (the others carry no preference)."""

    customers: np.ndarray
    products: np.ndarray
    sold: np.ndarray


def fit_als(
    bought: pl.DataFrame,
    cutoff: datetime,
    customer_ids: np.ndarray,
    index: ProductIndex,
    seed: int = 7,
    factors: int = ALS_FACTORS,
    regularization: float = ALS_REGULARIZATION,
    iterations: int = ALS_ITERATIONS,
    alpha: float = ALS_ALPHA,
    weighting: str = ALS_WEIGHTING,
) -> AlsFactors:
    """Implicit-feedback ALS (the `implicit` library) on orders per customer and product before
    the cutoff, fit on the customers who ordered then: the factors do not depend on which
    customers are asked for (a customer without orders gets zeros, no preference).

    Confidence per customer and product: with `weighting="log"`, 1 + alpha * log(1 + orders);
    with "bm25", alpha * the BM25 weight of the order counts (implicit's `bm25_weight`, which
    damps products everybody buys and customers who buy everything).
    """
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import bm25_weight

    counts = order_counts(bought, cutoff)
    if counts.is_empty():  # nothing to learn from: no preferences
        return AlsFactors(
            customers=np.zeros((len(customer_ids), factors), dtype=np.float32),
            products=np.zeros((len(index), factors), dtype=np.float32),
            sold=np.zeros(len(index), dtype=bool),
        )
    everyone = np.unique(counts["customer_id"].to_numpy())
    if weighting == "log":
        counts = counts.with_columns(
            (1.0 + alpha * pl.col("orders").cast(pl.Float64).log1p()).alias("confidence")
        )
        matrix = customer_product_matrix(counts, everyone, index, "confidence")
    elif weighting == "bm25":
        orders = customer_product_matrix(counts, everyone, index, "orders")
        matrix = (alpha * bm25_weight(orders, K1=ALS_BM25_K1, B=ALS_BM25_B)).tocsr()
        # BM25's inverse document frequency is zero or below for a product (nearly) every
        # customer bought: it says nothing of anyone's taste, so no confidence, not a negative one
        matrix.data = np.maximum(matrix.data, 0.0)
        matrix = matrix.astype(np.float32)
    else:
        raise ValueError(f"weighting must be 'log' or 'bm25', not {weighting!r}")
    # implicit runs its own threads, so BLAS gets one (implicit checks this when the model is
    # built, hence both inside)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            iterations=iterations,
            random_state=seed,
        )
        model.fit(matrix, show_progress=False)
    log.info("ALS fitted: %d customers x %d products", *matrix.shape)
    sold = np.zeros(len(index), dtype=bool)  # bought by somebody, whatever its confidence
    positions = index.positions(counts["product_id"].unique().to_numpy())
    sold[positions[positions >= 0]] = True
    fitted = np.asarray(model.user_factors)
    rows = np.minimum(np.searchsorted(everyone, customer_ids), len(everyone) - 1)
    ordered = everyone[rows] == customer_ids
    customers = np.zeros((len(customer_ids), fitted.shape[1]), dtype=fitted.dtype)
    customers[ordered] = fitted[rows[ordered]]
    return AlsFactors(
        customers=customers,
        products=np.asarray(model.item_factors),
        sold=sold,
    )


def als(
    bought: pl.DataFrame,
    cutoff: datetime,
    customer_ids: np.ndarray,
    index: ProductIndex,
    k: int,
    exclude: sp.csr_matrix | None = None,
    factors: AlsFactors | None = None,
    **parameters,
) -> dict[int, list[int]]:
    """Top-k by ALS preference: `factors` fit for these customers, or `fit_als` with the
    parameters passed."""
    if factors is None:
        factors = fit_als(bought, cutoff, customer_ids, index, **parameters)

    def score(rows: np.ndarray) -> np.ndarray:
        scores = factors.customers[rows] @ factors.products.T
        scores[:, ~factors.sold] = -np.inf
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

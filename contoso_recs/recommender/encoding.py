"""Products and customers as the integer and float arrays the two-tower model reads.

Vocabularies are fixed at training time and saved with the model, so the same encoding runs in
the training job, the weekly batch and the online endpoint. Index 0 always means "unknown" (or
padding), so a product, brand or token the model never saw still encodes.
"""

import re
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from contoso_recs.recommender.data import before, history_events, strongest_products

IMAGE_FEATURES = 14
NAME_TOKENS = 8
PRICE_BUCKETS = 16
MAX_HOUSEHOLD = 8
HISTORY_DAYS = 182
HASH_MULTIPLIER = 2_654_435_761


@dataclass(frozen=True)
class Vocabulary:
    """Every lookup table the model's inputs were encoded with."""

    product_ids: list[int]
    departments: list[str]
    categories: list[str]
    brands: list[str]
    tokens: list[str]
    price_edges: list[float]
    age_bands: list[str]
    income_bands: list[str]
    customer_buckets: int

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: dict) -> "Vocabulary":
        return cls(**payload)


@dataclass(frozen=True)
class ProductInputs:
    """Attributes of every product, row i for vocabulary position i (row 0: unknown)."""

    department: np.ndarray
    category: np.ndarray
    brand: np.ndarray
    tokens: np.ndarray
    price_bucket: np.ndarray
    image: np.ndarray


@dataclass(frozen=True)
class CustomerInputs:
    """One row per customer snapshot: who, profile, activity and pooled purchase history."""

    bucket: np.ndarray
    profile: np.ndarray
    activity: np.ndarray
    history: np.ndarray
    history_weight: np.ndarray


def name_tokens(name: str | None) -> list[str]:
    """Lower-case words of a product name, digits and punctuation dropped."""
    return re.findall(r"[a-z]{2,}", (name or "").lower())


def build_vocabulary(
    products: pl.DataFrame, customers: pl.DataFrame, customer_buckets: int
) -> Vocabulary:
    """Vocabularies of the catalogue and customer profiles (tokens used at least twice)."""
    counts: dict[str, int] = {}
    for name in products["name"].to_list():
        for token in set(name_tokens(name)):
            counts[token] = counts.get(token, 0) + 1
    prices = products["price"].drop_nulls().filter(products["price"].drop_nulls() > 0)
    quantiles = np.linspace(0, 1, PRICE_BUCKETS + 1)[1:-1]
    edges = np.quantile(np.log(prices.to_numpy()), quantiles) if len(prices) else []
    return Vocabulary(
        product_ids=sorted(int(p) for p in products["product_id"].to_list()),
        departments=_distinct(products["department"]),
        categories=_distinct(products["category"]),
        brands=_distinct(products["brand"]),
        tokens=sorted(t for t, n in counts.items() if n >= 2),
        price_edges=[float(e) for e in edges] if len(prices) else [],
        age_bands=_distinct(customers["age_band"]),
        income_bands=_distinct(customers["income_band"]),
        customer_buckets=customer_buckets,
    )


def encode_products(vocab: Vocabulary, products: pl.DataFrame, images: pl.DataFrame):
    """ProductInputs for every vocabulary product; absent attributes encode as 0.

    Image features are 14 colour values plus a flag, all zero where a product has no image.
    """
    rows = pl.DataFrame({"product_id": vocab.product_ids}, schema={"product_id": pl.Int64})
    table = rows.join(products, on="product_id", how="left").join(
        images.select("product_id", "features").unique("product_id"), on="product_id", how="left"
    )
    n = len(vocab.product_ids) + 1
    image = np.zeros((n, IMAGE_FEATURES + 1), dtype=np.float32)
    for i, features in enumerate(table["features"].to_list(), start=1):
        if features is not None and len(features) == IMAGE_FEATURES:
            image[i, :IMAGE_FEATURES] = features
            image[i, IMAGE_FEATURES] = 1.0
    return ProductInputs(
        department=_padded(_codes(table["department"], vocab.departments)),
        category=_padded(_codes(table["category"], vocab.categories)),
        brand=_padded(_codes(table["brand"], vocab.brands)),
        tokens=_token_matrix(table["name"].to_list(), vocab.tokens),
        price_bucket=_padded(_price_buckets(table["price"], vocab.price_edges)),
        image=image,
    )


def customer_bucket(customer_ids: np.ndarray, buckets: int) -> np.ndarray:
    """Hashed customer id in 1..buckets (no vocabulary, so new customers get a row too)."""
    mixed = (customer_ids.astype(np.uint64) * np.uint64(HASH_MULTIPLIER)) & np.uint64(0xFFFFFFFF)
    return (mixed % np.uint64(buckets)).astype(np.int64) + 1


def encode_customers(
    vocab: Vocabulary,
    bought: pl.DataFrame,
    profiles: pl.DataFrame,
    customer_ids: np.ndarray,
    at: datetime,
    history_len: int,
    half_life_days: float,
    views: pl.DataFrame | None = None,
    purchase_weight: str = "orders",
    seconds_per_purchase: float = 0.0,
) -> CustomerInputs:
    """CustomerInputs as of `at`, from purchases and product views strictly before it.

    History: the customer's `history_len` strongest products in the half-year before `at`
    (purchases and views weighted as data.history_events says, discounted by age), with
    weights summing to 1.
    """
    since = at - timedelta(days=HISTORY_DAYS)
    # only these customers, and only products the model knows: a product launched after the
    # model was trained would otherwise take a history slot and then be left empty
    wanted = pl.col("customer_id").is_in(
        pl.Series(customer_ids, dtype=pl.Int64).implode()
    ) & pl.col("product_id").is_in(pl.Series(vocab.product_ids, dtype=pl.Int64).implode())
    recent_views = None
    if views is not None:
        recent_views = views.filter(
            (pl.col("viewed_at") < at) & (pl.col("viewed_at") >= since) & wanted
        )
    events = history_events(
        bought.filter((pl.col("at") < at) & (pl.col("at") >= since) & wanted),
        recent_views,
        purchase_weight,
        seconds_per_purchase,
    )
    strongest = strongest_products(events, at, half_life_days, history_len)
    n = len(customer_ids)
    history = np.zeros((n, history_len), dtype=np.int64)
    weight = np.zeros((n, history_len), dtype=np.float32)
    owners = strongest["customer_id"].to_numpy()
    rows = np.searchsorted(customer_ids, owners)
    inside = (rows < n) & (customer_ids[np.minimum(rows, n - 1)] == owners)
    positions = _product_positions(vocab, strongest["product_id"].to_numpy())
    rank = strongest["rank"].to_numpy()
    keep = inside & (positions > 0)
    history[rows[keep], rank[keep]] = positions[keep]
    weight[rows[keep], rank[keep]] = strongest["strength"].to_numpy()[keep]
    totals = weight.sum(axis=1, keepdims=True)
    weight = np.divide(weight, totals, out=np.zeros_like(weight), where=totals > 0)
    return CustomerInputs(
        bucket=customer_bucket(customer_ids, vocab.customer_buckets),
        profile=_profiles(vocab, profiles, customer_ids),
        activity=_activity(bought, customer_ids, at),
        history=history,
        history_weight=weight,
    )


def product_positions(vocab: Vocabulary, product_ids: np.ndarray) -> np.ndarray:
    """Vocabulary position (1..n) of each product id, 0 for a product the model never saw."""
    return _product_positions(vocab, product_ids)


def _product_positions(vocab: Vocabulary, product_ids: np.ndarray) -> np.ndarray:
    known = np.asarray(vocab.product_ids, dtype=np.int64)
    if not len(known):
        return np.zeros(len(product_ids), dtype=np.int64)
    found = np.clip(np.searchsorted(known, product_ids), 0, len(known) - 1)
    return np.where(known[found] == product_ids, found + 1, 0)


def _activity(bought: pl.DataFrame, customer_ids: np.ndarray, at: datetime) -> np.ndarray:
    """log orders before `at`, scaled log days since the last one, and has-ordered flag."""
    summary = (
        before(bought, at)
        .group_by("customer_id")
        .agg(
            pl.col("order_id").n_unique().alias("orders"),
            ((pl.lit(at) - pl.col("at").max()).dt.total_seconds() / 86_400.0).alias("days"),
        )
    )
    table = pl.DataFrame({"customer_id": customer_ids}, schema={"customer_id": pl.Int64}).join(
        summary, on="customer_id", how="left"
    )
    orders = table["orders"].fill_null(0).to_numpy().astype(np.float32)
    days = table["days"].fill_null(365.0).to_numpy().astype(np.float32)
    return np.stack(
        [np.log1p(orders) / 5.0, np.log1p(np.minimum(days, 365.0)) / 6.0, (orders > 0) * 1.0],
        axis=1,
    ).astype(np.float32)


def _profiles(vocab: Vocabulary, profiles: pl.DataFrame, customer_ids: np.ndarray) -> np.ndarray:
    """Age band, income band and household size codes (0 where the profile is unknown)."""
    table = pl.DataFrame({"customer_id": customer_ids}, schema={"customer_id": pl.Int64}).join(
        profiles.unique("customer_id"), on="customer_id", how="left"
    )
    size = table["household_size"].fill_null(0).clip(0, MAX_HOUSEHOLD).to_numpy()
    return np.stack(
        [
            _codes(table["age_band"], vocab.age_bands),
            _codes(table["income_band"], vocab.income_bands),
            size.astype(np.int64),
        ],
        axis=1,
    )


def _distinct(column: pl.Series) -> list[str]:
    return sorted(str(v) for v in column.drop_nulls().unique().to_list())


def _codes(column: pl.Series, values: list[str]) -> np.ndarray:
    lookup = {v: i + 1 for i, v in enumerate(values)}
    return np.asarray([lookup.get(v, 0) for v in column.to_list()], dtype=np.int64)


def _padded(codes: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros(1, dtype=np.int64), codes])


def _price_buckets(prices: pl.Series, edges: list[float]) -> np.ndarray:
    values = prices.to_numpy().astype(np.float64)
    valid = np.isfinite(values) & (values > 0)
    logs = np.log(np.where(valid, values, 1.0))
    return np.where(valid, np.searchsorted(edges, logs) + 1, 0).astype(np.int64)


def _token_matrix(names: list[str | None], tokens: list[str]) -> np.ndarray:
    lookup = {t: i + 1 for i, t in enumerate(tokens)}
    matrix = np.zeros((len(names) + 1, NAME_TOKENS), dtype=np.int64)
    for row, name in enumerate(names, start=1):
        codes = [lookup[t] for t in name_tokens(name) if t in lookup][:NAME_TOKENS]
        matrix[row, : len(codes)] = codes
    return matrix

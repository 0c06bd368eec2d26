"""The shipped recommender: a customer's repeat purchases merged with two-tower candidates.

Every catalogue product gets one score per customer:

    cosine(customer, product)                             two-tower
    + repeat_weight * log(1 + repeat strength)            buy again, orders discounted by age
    + popularity_weight * log(1 + recent buyers)          what the whole store buys this month
    + category_weight * log(1 + category strength)        how much they buy in its category

and the top 5 are recommended. With `allow_repeats=False` products the customer bought before
are never shown (task B: discovery); with True they compete on score (task A). The weights are
tuned on a validation week that ends at the cutoff, never on the week being predicted.
"""

import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime

import numpy as np
import polars as pl
import scipy.sparse as sp

from contoso_recs.recommender.data import decayed_history, product_popularity
from contoso_recs.recommender.encoding import product_positions
from contoso_recs.recommender.metrics import ndcg
from contoso_recs.recommender.ranking import (
    ProductIndex,
    best_positions,
    customer_product_matrix,
)
from contoso_recs.recommender.train import TrainedModel

log = logging.getLogger(__name__)

POPULARITY_DAYS = 28
MODEL_CANDIDATES = 100
POPULAR_CANDIDATES = 100
REPEAT_CANDIDATES = 100
TOP_CATEGORIES = 3
CATEGORY_CANDIDATES = 30
CATEGORY_HALF_LIFE_DAYS = 42.0
WEIGHT_GRID = {
    "repeat_weight": (0.0, 0.5, 1.0, 2.0, 4.0),
    "repeat_half_life_days": (14.0, 42.0, 120.0),
    "popularity_weight": (0.0, 0.02, 0.05, 0.1, 0.2),
    "category_weight": (0.0, 0.02, 0.05, 0.1, 0.2),
}


@dataclass(frozen=True)
class BlendConfig:
    """How repeat, two-tower and popularity scores combine, and whether repeats may show."""

    allow_repeats: bool = True
    repeat_weight: float = 1.0
    repeat_half_life_days: float = 42.0
    popularity_weight: float = 0.0
    category_weight: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


# The shipped configuration per task, tuned on validation weeks of The Complete Journey
# (`make evaluate` tunes afresh on the week before each cutoff).
SHIPPED_BLENDS = {
    "A": BlendConfig(
        allow_repeats=True,
        repeat_weight=2.0,
        repeat_half_life_days=42.0,
        popularity_weight=0.1,
        category_weight=0.1,
    ),
    "B": BlendConfig(allow_repeats=False, popularity_weight=0.2),
}


@dataclass(frozen=True)
class Candidates:
    """Per customer (row), the catalogue positions worth scoring and their signals.

    Candidates are the union of the customer's strongest repeat products, the two-tower top
    products, the store's most popular products and the most popular products of the
    customer's favourite categories; a padding slot has position -1.
    """

    customer_ids: np.ndarray
    index: ProductIndex
    positions: np.ndarray
    model: np.ndarray
    popularity: np.ndarray
    repeat: dict[float, np.ndarray]
    category: np.ndarray
    owned: np.ndarray


def two_tower_scores(
    trained: TrainedModel,
    bought: pl.DataFrame,
    profiles: pl.DataFrame,
    customer_ids: np.ndarray,
    cutoff: datetime,
    index: ProductIndex,
) -> np.ndarray:
    """Cosine of every customer (sorted ids) with every catalogue product; -inf if unknown."""
    customers = trained.customer_vectors(bought, profiles, customer_ids, cutoff)
    products = trained.product_vectors()
    positions = product_positions(trained.vocab, index.product_ids)
    scores = customers @ products[positions].T
    scores[:, positions == 0] = -np.inf
    return scores.astype(np.float32)


def candidates(
    model_scores: np.ndarray,
    bought: pl.DataFrame,
    cutoff: datetime,
    customer_ids: np.ndarray,
    index: ProductIndex,
    categories: np.ndarray | None = None,
    half_lives: tuple[float, ...] = WEIGHT_GRID["repeat_half_life_days"],
) -> Candidates:
    """Candidates of each customer with model score, popularity, repeat and category strength,
    and ownership. `categories` holds a category code per catalogue position (0: none)."""
    signals = Signals.of(bought, cutoff, customer_ids, index, categories, half_lives)
    return signals.pool(
        np.arange(len(customer_ids)),
        best_positions(model_scores, MODEL_CANDIDATES),
        lambda pool: np.take_along_axis(model_scores, np.maximum(pool, 0), axis=1),
    )


@dataclass(frozen=True)
class Signals:
    """What the blend knows before the cutoff: store popularity, and per customer (row) the
    decayed strength of every product they bought, at each repeat half-life."""

    customer_ids: np.ndarray
    index: ProductIndex
    popularity: np.ndarray
    repeat: dict[float, sp.csr_matrix]
    category_history: sp.csr_matrix
    categories: np.ndarray
    favourites: np.ndarray

    @classmethod
    def of(
        cls,
        bought: pl.DataFrame,
        cutoff: datetime,
        customer_ids: np.ndarray,
        index: ProductIndex,
        categories: np.ndarray | None = None,
        half_lives: tuple[float, ...] = WEIGHT_GRID["repeat_half_life_days"],
    ) -> "Signals":
        if categories is None:
            categories = np.zeros(len(index), dtype=np.int64)
        popularity = _popularity(bought, cutoff, index)
        return cls(
            customer_ids=customer_ids,
            index=index,
            popularity=popularity,
            repeat={h: _strength(bought, cutoff, customer_ids, index, h) for h in half_lives},
            category_history=_strength(
                bought, cutoff, customer_ids, index, CATEGORY_HALF_LIFE_DAYS
            ),
            categories=categories,
            favourites=_category_top_products(categories, popularity),
        )

    def pool(
        self,
        rows: np.ndarray,
        model_top: np.ndarray,
        model_score: Callable[[np.ndarray], np.ndarray],
    ) -> Candidates:
        """The candidates of the customers at `rows`: `model_top` holds their best products by
        two-tower score, and `model_score(positions)` scores any (rows x slots) positions."""
        repeat = {h: m[rows] for h, m in self.repeat.items()}
        longest, shortest = max(repeat), min(repeat)
        category_strength = _category_strength(self.category_history[rows], self.categories)
        pool = np.concatenate(
            [
                model_top,
                np.tile(
                    np.argsort(-self.popularity, kind="stable")[:POPULAR_CANDIDATES],
                    (len(rows), 1),
                ),
                _strongest(repeat[longest], REPEAT_CANDIDATES),
                _strongest(repeat[shortest], REPEAT_CANDIDATES),
                _category_favourites(category_strength, self.favourites),
            ],
            axis=1,
        )
        pool.sort(axis=1)
        pool[:, 1:][pool[:, 1:] == pool[:, :-1]] = -1
        safe = np.maximum(pool, 0)
        return Candidates(
            customer_ids=self.customer_ids[rows],
            index=self.index,
            positions=pool,
            model=np.where(pool >= 0, model_score(pool), -np.inf),
            popularity=np.log1p(self.popularity[safe]),
            repeat={h: np.log1p(_lookup(m, pool)) for h, m in repeat.items()},
            category=np.log1p(np.take_along_axis(category_strength, self.categories[safe], axis=1)),
            owned=_lookup(repeat[longest], pool) > 0,
        )


def contributions(pool: Candidates, config: BlendConfig) -> dict[str, np.ndarray]:
    """Each term of the blend score per candidate slot: model, repeat, popularity, category."""
    return {
        "model": pool.model,
        "repeat": config.repeat_weight * pool.repeat[config.repeat_half_life_days],
        "popularity": config.popularity_weight * pool.popularity,
        "category": config.category_weight * pool.category,
    }


def blend_scores(pool: Candidates, config: BlendConfig) -> np.ndarray:
    """The blend score of every candidate slot; -inf where it may not be shown."""
    score = sum(contributions(pool, config).values())
    if not config.allow_repeats:
        score = np.where(pool.owned, -np.inf, score)
    return np.where(pool.positions >= 0, score, -np.inf)


def recommend(pool: Candidates, config: BlendConfig, k: int) -> dict[int, list[int]]:
    """Top-k product ids per customer under the blend rule."""
    score = blend_scores(pool, config)
    best = best_positions(score, k)
    lists = {}
    for row, slots in enumerate(best):
        slots = slots[np.isfinite(score[row, slots])]
        lists[int(pool.customer_ids[row])] = pool.index.product_ids[
            pool.positions[row, slots]
        ].tolist()
    return lists


def tune(
    pool: Candidates, targets: Mapping[int, set[int]], allow_repeats: bool
) -> tuple[BlendConfig, float]:
    """The grid point with the best NDCG@5 on a validation week, and that NDCG@5."""
    best, best_ndcg = BlendConfig(allow_repeats=allow_repeats), -1.0
    grid = itertools.product(
        WEIGHT_GRID["repeat_weight"] if allow_repeats else (0.0,),
        WEIGHT_GRID["repeat_half_life_days"] if allow_repeats else (42.0,),
        WEIGHT_GRID["popularity_weight"],
        WEIGHT_GRID["category_weight"],
    )
    for repeat_weight, half_life, popularity_weight, category_weight in grid:
        config = BlendConfig(
            allow_repeats, repeat_weight, half_life, popularity_weight, category_weight
        )
        lists = recommend(pool, config, 5)
        value = float(np.mean([ndcg(lists.get(c, []), t) for c, t in targets.items()]))
        if value > best_ndcg:
            best, best_ndcg = config, value
    log.info("blend tuned (repeats allowed: %s): %s, NDCG@5 %.4f", allow_repeats, best, best_ndcg)
    return best, best_ndcg


def _popularity(bought: pl.DataFrame, cutoff: datetime, index: ProductIndex) -> np.ndarray:
    counts = product_popularity(bought, cutoff, POPULARITY_DAYS)
    popularity = np.zeros(len(index), dtype=np.float32)
    positions = index.positions(counts["product_id"].to_numpy())
    popularity[positions[positions >= 0]] = counts["customers"].to_numpy()[positions >= 0]
    return popularity


def _strength(
    bought: pl.DataFrame,
    cutoff: datetime,
    customer_ids: np.ndarray,
    index: ProductIndex,
    half_life_days: float,
) -> sp.csr_matrix:
    strongest = decayed_history(bought, cutoff, half_life_days, max_products=10**9)
    return customer_product_matrix(strongest, customer_ids, index, "strength")


def _category_strength(strength: sp.csr_matrix, categories: np.ndarray) -> np.ndarray:
    """Customers x category codes: the summed strength of the customer's products in each."""
    one_hot = sp.csr_matrix(
        (np.ones(len(categories), dtype=np.float32), (np.arange(len(categories)), categories)),
        shape=(len(categories), int(categories.max(initial=0)) + 1),
    )
    by_category = np.asarray((strength @ one_hot).todense(), dtype=np.float32)
    by_category[:, 0] = 0.0
    return by_category


def _category_top_products(categories: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Per category code, its CATEGORY_CANDIDATES most popular products (padded with -1)."""
    n_categories = int(categories.max(initial=0)) + 1
    order = np.lexsort((-popularity, categories))
    sorted_categories = categories[order]
    favourites = np.full((n_categories, CATEGORY_CANDIDATES), -1, dtype=np.int64)
    for code in range(1, n_categories):
        start, end = np.searchsorted(sorted_categories, [code, code + 1])
        top = order[start:end][:CATEGORY_CANDIDATES]
        favourites[code, : len(top)] = top
    return favourites


def _category_favourites(category_strength: np.ndarray, favourites: np.ndarray) -> np.ndarray:
    """Per customer, the most popular products of their TOP_CATEGORIES strongest categories."""
    strongest = np.argsort(-category_strength, axis=1, kind="stable")[:, :TOP_CATEGORIES]
    picked = favourites[strongest].reshape(len(category_strength), -1)
    has_strength = np.take_along_axis(category_strength, strongest, axis=1) > 0
    return np.where(np.repeat(has_strength, CATEGORY_CANDIDATES, axis=1), picked, -1)


def _strongest(matrix: sp.csr_matrix, k: int) -> np.ndarray:
    """Per row, the positions of its k largest entries, padded with -1."""
    out = np.full((matrix.shape[0], k), -1, dtype=np.int64)
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        top = np.argsort(-matrix.data[start:end], kind="stable")[:k]
        out[row, : len(top)] = matrix.indices[start:end][top]
    return out


def _lookup(matrix: sp.csr_matrix, positions: np.ndarray) -> np.ndarray:
    """matrix[row, positions[row, j]] for every slot (0 where absent or padding)."""
    coo = matrix.tocoo()
    width = np.int64(matrix.shape[1])
    keys = coo.row.astype(np.int64) * width + coo.col
    order = np.argsort(keys)
    keys, values = keys[order], coo.data[order]
    wanted = np.arange(positions.shape[0])[:, None] * width + np.maximum(positions, 0)
    found = np.clip(np.searchsorted(keys, wanted), 0, max(len(keys) - 1, 0))
    hit = (positions >= 0) & (keys[found] == wanted) if len(keys) else positions < -1
    return np.where(hit, values[found] if len(keys) else 0.0, 0.0).astype(np.float32)

"""The shipped recommender: a customer's repeat purchases merged with two-tower candidates.

Every catalogue product gets one score per customer:

    model_weight * cosine(customer, product)              two-tower (model_weight 1 by default)
    + repeat_weight * log(1 + repeat strength)            buy again, orders discounted by age
    + popularity_weight * log(1 + recent buyers)          what the whole store buys this month
    + category_weight * log(1 + category strength)        how much they buy in its category
    + co_purchase_weight * co-purchase / customer's best  bought by customers who buy theirs
    + trend_weight * log(1 + buyers this past week)       what is selling now
    + frequency_weight * log(1 + orders with it)          how often they bought it
    + due_weight * due                                    near their usual interval for it
    + repeat_rate_weight * product repeat rate            a product people buy again (if owned)
    + als_weight * ALS preference                         what customers who shop like them buy
    + mailer_weight * mailer share                        in this week's mailer (share of stores)

and the top 5 are recommended. With `allow_repeats=False` products the customer bought before
are never shown (task B: discovery); with True they compete on score (task A). The weights are
tuned on validation weeks that end at or before the cutoff, never on the week being predicted.
"""

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Protocol

import numpy as np
import polars as pl
import scipy.sparse as sp

from contoso_recs.recommender.baselines import AlsFactors, co_purchase_scorer, fit_als
from contoso_recs.recommender.data import (
    before,
    decayed_history,
    product_popularity,
    week_mailer,
)
from contoso_recs.recommender.encoding import product_positions
from contoso_recs.recommender.ranking import (
    ProductIndex,
    Scorer,
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
TREND_DAYS = 7
CO_PURCHASE_CANDIDATES = 100
CO_PURCHASE_SMOOTHING = 20.0
# Above the cosine's 1/2: a little less weight on products everybody buys (validation weeks).
CO_PURCHASE_TARGET_EXPONENT = 0.65
CO_PURCHASE_BLOCK = 256
REPEAT_RATE_PRIOR = 10.0
# Customers per gather of ALS product factors when a pool's preferences are computed.
ALS_ROWS = 256
VALIDATION_K = 5
# The best candidates a per-category limit looks through (CAPPED_WIDTH, or 10 k for longer lists).
CAPPED_WIDTH = 50
# Extra signals in `Candidates.features` and the BlendConfig weight of each.
EXTRA_FEATURES = {
    "co_purchase": "co_purchase_weight",
    "trend": "trend_weight",
    "frequency": "frequency_weight",
    "due": "due_weight",
    "repeat_rate": "repeat_rate_weight",
    "als": "als_weight",
    "mailer": "mailer_weight",
}
TUNED_WEIGHTS_NEW_ONLY = (
    "popularity_weight",
    "category_weight",
    "co_purchase_weight",
    "trend_weight",
    "als_weight",
    "mailer_weight",
)
TUNED_WEIGHTS = (
    "repeat_weight",
    *TUNED_WEIGHTS_NEW_ONLY,
    "frequency_weight",
    "due_weight",
    "repeat_rate_weight",
)
COORDINATE_PASSES = 2
STEP_FACTORS = (0.25, 0.5, 0.8, 1.25, 2.0, 4.0)
LOG_SCALE = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
MIN_GAIN = 1e-5
WEIGHT_GRID = {
    "repeat_weight": (0.0, 0.5, 1.0, 2.0, 4.0),
    "repeat_half_life_days": (14.0, 42.0, 120.0),
    "popularity_weight": (0.0, 0.02, 0.05, 0.1, 0.2),
    "category_weight": (0.0, 0.02, 0.05, 0.1, 0.2),
}


@dataclass(frozen=True)
class BlendConfig:
    """How repeat, two-tower and popularity scores combine, and whether repeats may show.

    Fields after `category_weight` were added later; their defaults leave the rule as before.
    """

    allow_repeats: bool = True
    repeat_weight: float = 1.0
    repeat_half_life_days: float = 42.0
    popularity_weight: float = 0.0
    category_weight: float = 0.0
    co_purchase_weight: float = 0.0
    trend_weight: float = 0.0
    frequency_weight: float = 0.0
    due_weight: float = 0.0
    repeat_rate_weight: float = 0.0
    model_weight: float = 1.0
    als_weight: float = 0.0
    mailer_weight: float = 0.0
    # At most this many products of one category in a list (0: no limit).
    max_per_category: int = 0

    def __post_init__(self):
        numbers = {k: v for k, v in asdict(self).items() if k != "allow_repeats"}
        bad = [
            k
            for k, v in numbers.items()
            if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v)
        ]
        if self.max_per_category < 0:
            bad.append("max_per_category")
        if bad or self.repeat_half_life_days <= 0:
            raise ValueError(
                f"blend weights must be finite numbers and the half-life positive: {bad or numbers}"
            )

    def to_json(self) -> dict:
        return asdict(self)

    def scores(self, pool: "Candidates") -> np.ndarray:
        """The blend score of every candidate slot; -inf where it may not be shown."""
        return blend_scores(pool, self)


class Rule(Protocol):
    """How a customer's candidates are ranked: weights (BlendConfig) or a learned ranker
    (learned.LearnedRule)."""

    allow_repeats: bool

    def scores(self, pool: "Candidates") -> np.ndarray: ...


# The shipped configuration per task, tuned on the validation weeks from 2017-10-30 and
# 2017-11-06 of The Complete Journey (`make evaluate` tunes afresh before each cutoff).
SHIPPED_BLENDS = {
    "A": BlendConfig(
        allow_repeats=True,
        repeat_weight=1.0,
        repeat_half_life_days=42.0,
        popularity_weight=0.05,
        trend_weight=0.03,
        frequency_weight=0.3,
        due_weight=0.01,
    ),
    # Task B: the model with a little store popularity and ALS preference. On the validation
    # weeks from 2017-10-30 and 2017-11-06 of The Complete Journey popularity weights 0.02 to
    # 0.2 are within noise of each other (NDCG@5 .0172 against .0180, the bootstrap interval
    # of a week is about ±.003), while 0.02 shows 7 times as many distinct products (coverage@5
    # .0044 against .0006) and on the demo data is the best weight tried (task B HR@5 .286
    # against .244 with 0.2, popularity .214; the co-purchase, category and trend weights tuned
    # on those weeks score .274 there).
    # The ALS term (`python -m experiments.als_weight`): on the four validation weeks of The
    # Complete Journey before both evaluation cutoffs (2017-10-16 to 11-06, each scored by a
    # model trained before it) weight 0.15 raised NDCG@5 in every week, mean .0182 to .0211,
    # HR@5 .0742 to .0864, with 43% more distinct products; 0.3 scored .0214 but lowered the
    # demo data's task B below no ALS (NDCG@5 .0928 against .0949), where 0.15 scores .0971
    # (the demo's week before the one `make demo` reports on).
    # The mailer term (`python -m experiments.mailer_weight`): on the eight validation weeks
    # from 2017-10-02 to 11-27 of The Complete Journey (each scored by a model trained before
    # it) weight 0.1 raised HR@5 in seven, mean .0859 to .0970, NDCG@5 .0213 to .0244; 0.2 and
    # more scored less (.0949 / .0241) and showed fewer distinct products.
    # At most one product of a category (`python -m experiments.task_b_category_cap`): on the
    # same eight weeks, with the mailer term, mean HR@5 .0970 to .1018, NDCG@5 .0244 to .0253,
    # up in six weeks (11-20 -.0023, 11-27 unchanged). On the two test weeks of `make evaluate`
    # it then scored lower with the models of 4 epochs (HR@5 .0877 to .0822 at 2017-12-04,
    # .0968 to .0944 at 11-13); over all ten weeks it is +.003 on average, inside a week's
    # noise (about ±.015), and kept.
    "B": BlendConfig(
        allow_repeats=False,
        popularity_weight=0.02,
        als_weight=0.15,
        mailer_weight=0.1,
        max_per_category=1,
    ),
}


@dataclass(frozen=True)
class Candidates:
    """Per customer (row), the catalogue positions worth scoring and their signals.

    Candidates are the union of the customer's strongest repeat products, the two-tower top
    products, the store's most popular products, the products of the customer's favourite
    categories that the two-tower model likes best (the most popular ones when there is no
    model score) and the products most co-purchased with theirs; a padding slot has position
    -1. `features` holds the further signals by name (EXTRA_FEATURES), each shaped like
    `positions`.
    """

    customer_ids: np.ndarray
    index: ProductIndex
    positions: np.ndarray
    model: np.ndarray
    popularity: np.ndarray
    repeat: dict[float, np.ndarray]
    category: np.ndarray
    owned: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    # The category code of each slot's product (0: none), for rules that limit a category.
    category_codes: np.ndarray | None = None

    def customers_where(self, mask: np.ndarray) -> "Candidates":
        """The candidates of the customers (rows) where `mask` holds."""
        return Candidates(
            customer_ids=self.customer_ids[mask],
            index=self.index,
            positions=self.positions[mask],
            model=self.model[mask],
            popularity=self.popularity[mask],
            repeat={h: v[mask] for h, v in self.repeat.items()},
            category=self.category[mask],
            owned=self.owned[mask],
            features={name: v[mask] for name, v in self.features.items()},
            category_codes=None if self.category_codes is None else self.category_codes[mask],
        )


def two_tower_scores(
    trained: TrainedModel,
    bought: pl.DataFrame,
    profiles: pl.DataFrame,
    customer_ids: np.ndarray,
    cutoff: datetime,
    index: ProductIndex,
    views: pl.DataFrame | None = None,
) -> np.ndarray:
    """Cosine of every customer (sorted ids) with every catalogue product, plus what its recent
    buyers add where the model learnt that; -inf if unknown."""
    customers = trained.scoring_customer_vectors(bought, profiles, customer_ids, cutoff, views)
    products = trained.scoring_product_vectors(bought, cutoff)
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
    als: AlsFactors | None = None,
    promotions: pl.DataFrame | None = None,
) -> Candidates:
    """Candidates of each customer with model score, popularity, repeat and category strength,
    ownership and the EXTRA_FEATURES (ALS preferences and the week's mailer included).
    `categories` holds a category code per catalogue position (0: none); `bought` holds every
    customer's purchases (co-purchases are counted over all of them), of which only those
    before the cutoff are read. `als`: ALS factors already fit for these customers (`fit_als`
    with its defaults); fit here when not given. `promotions`: the lake's promotion plan."""
    signals = Signals.of(
        bought,
        cutoff,
        customer_ids,
        index,
        categories,
        half_lives,
        als=als is None,
        promotions=promotions,
    )
    if als is not None:
        signals = replace(signals, als=als)
    return signals.pool(
        np.arange(len(customer_ids)),
        best_positions(model_scores, MODEL_CANDIDATES),
        lambda positions: np.take_along_axis(model_scores, np.maximum(positions, 0), axis=1),
    )


ModelScore = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Signals:
    """What the blend knows before the cutoff, computed once for all customers (rows): store
    popularity and trend, every customer's decayed purchase strengths and repeat habits, the
    co-purchase scorer and (unless left out) ALS factors. `pool` then builds the candidates of
    any batch of rows, so millions of customers can be ranked batch by batch with the same
    result as all at once."""

    customer_ids: np.ndarray
    index: ProductIndex
    categories: np.ndarray
    half_lives: tuple[float, ...]
    popularity: np.ndarray
    recent: np.ndarray
    strengths: dict[float, sp.csr_matrix]
    habits: "RepeatHabits"
    co_purchase: Scorer
    favourites: np.ndarray
    als: AlsFactors | None = None
    mailer: np.ndarray | None = None

    @classmethod
    def of(
        cls,
        bought: pl.DataFrame,
        cutoff: datetime,
        customer_ids: np.ndarray,
        index: ProductIndex,
        categories: np.ndarray | None = None,
        half_lives: tuple[float, ...] = WEIGHT_GRID["repeat_half_life_days"],
        *,
        als: bool,
        promotions: pl.DataFrame | None = None,
    ) -> "Signals":
        """The signals as of the cutoff for `customer_ids` (sorted, each once); `als=False`
        leaves out the ALS factors (the one signal that costs minutes at millions of customers:
        `benchmarks.als_signal`) for rules that give them no weight. `promotions`: the lake's
        promotion plan, of which only the mailer of the week holding the cutoff is read (none:
        no product is in a mailer)."""
        customer_ids = np.asarray(customer_ids, dtype=np.int64)
        if (np.diff(customer_ids) <= 0).any():
            raise ValueError("customer ids must be sorted and each given once")
        bought = before(bought, cutoff)
        if categories is None:
            categories = np.zeros(len(index), dtype=np.int64)
        popularity = _popularity(bought, cutoff, index, POPULARITY_DAYS)
        strengths = _strengths(
            bought, cutoff, customer_ids, index, (*half_lives, CATEGORY_HALF_LIFE_DAYS)
        )
        return cls(
            customer_ids=customer_ids,
            index=index,
            categories=categories,
            half_lives=tuple(half_lives),
            popularity=popularity,
            recent=_popularity(bought, cutoff, index, TREND_DAYS),
            strengths=strengths,
            habits=repeat_habits(bought, cutoff, customer_ids, index),
            co_purchase=_co_purchase_scorer(bought, strengths[CATEGORY_HALF_LIFE_DAYS], index),
            favourites=_category_top_products(categories, popularity),
            als=fit_als(bought, cutoff, customer_ids, index) if als else None,
            mailer=mailer_shares(promotions, cutoff, index),
        )

    def pool(self, rows: np.ndarray, model_top: np.ndarray, model_score: ModelScore) -> Candidates:
        """The candidates of the customers at `rows`: `model_top` holds their best products by
        two-tower score (rows x MODEL_CANDIDATES, -1 padded), `model_score(positions)` scores
        any (rows x n) catalogue positions for them (-inf where the model cannot)."""
        repeat = {h: self.strengths[h][rows] for h in self.half_lives}
        longest, shortest = max(self.half_lives), min(self.half_lives)
        profile = self.strengths[CATEGORY_HALF_LIFE_DAYS][rows]
        category_strength = _category_strength(profile, self.categories)
        co_purchase = _top_co_purchases(self.co_purchase, rows, len(self.index))
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
                _category_best(category_strength, self.categories, model_score),
                _strongest(co_purchase, CO_PURCHASE_CANDIDATES),
            ],
            axis=1,
        )
        pool.sort(axis=1)
        pool[:, 1:][pool[:, 1:] == pool[:, :-1]] = -1
        safe = np.maximum(pool, 0)
        owned = _lookup(repeat[longest], pool) > 0
        return Candidates(
            customer_ids=self.customer_ids[rows],
            index=self.index,
            positions=pool,
            model=np.where(pool >= 0, model_score(pool), -np.inf),
            popularity=np.log1p(self.popularity[safe]),
            repeat={h: np.log1p(_lookup(m, pool)) for h, m in repeat.items()},
            category=np.log1p(np.take_along_axis(category_strength, self.categories[safe], axis=1)),
            owned=owned,
            category_codes=np.where(pool >= 0, self.categories[safe], 0),
            features={
                "co_purchase": _lookup(co_purchase, pool) / _row_max(co_purchase)[:, None],
                "trend": np.log1p(self.recent[safe]),
                "frequency": np.log1p(_lookup(self.habits.orders[rows], pool)),
                "due": _lookup(self.habits.due[rows], pool),
                "repeat_rate": np.where(owned, self.habits.product_repeat_rate[safe], 0.0).astype(
                    np.float32
                ),
                "mailer": (
                    self.mailer[safe] * (pool >= 0)
                    if self.mailer is not None
                    else np.zeros(pool.shape, dtype=np.float32)
                ).astype(np.float32),
                **({"als": _preferences(self.als, rows, pool)} if self.als else {}),
            },
        )


def mailer_shares(
    promotions: pl.DataFrame | None, cutoff: datetime, index: ProductIndex
) -> np.ndarray:
    """Per catalogue position, the share of stores whose mailer features the product in the
    week holding the cutoff (0 for a product in no mailer, and for every product without a
    promotion plan)."""
    shares = np.zeros(len(index), dtype=np.float32)
    if promotions is None or promotions.is_empty():
        return shares
    mailer = week_mailer(promotions, cutoff)
    positions = index.positions(mailer["product_id"].to_numpy())
    known = positions >= 0
    shares[positions[known]] = mailer["mailer_share"].to_numpy()[known]
    return shares


def _preferences(als: AlsFactors, rows: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """ALS preference of the customers at `rows` for their pool's products. Padding and
    products nobody bought before the cutoff (a new launch) get 0, the preference of no
    evidence either way, as a customer without orders does for every product."""
    safe = np.maximum(pool, 0)
    preference = np.empty(pool.shape, dtype=np.float32)
    for first in range(0, len(rows), ALS_ROWS):
        part = slice(first, first + ALS_ROWS)
        preference[part] = np.einsum(
            "rd,rsd->rs", als.customers[rows[part]], als.products[safe[part]]
        )
    return np.where((pool >= 0) & als.sold[safe], preference, 0.0).astype(np.float32)


def term_weight(config: BlendConfig, term: str) -> float:
    """The weight a blend gives the term `term` of `contributions`."""
    return getattr(config, EXTRA_FEATURES.get(term, f"{term}_weight"))


def contributions(pool: Candidates, config: BlendConfig) -> dict[str, np.ndarray]:
    """Each term of the blend score per candidate slot, by name: model, repeat, popularity,
    category and the EXTRA_FEATURES (a product the model cannot score gets -inf)."""
    if config.repeat_half_life_days not in pool.repeat:
        raise ValueError(
            f"the blend weighs repeats with a {config.repeat_half_life_days}-day half-life but "
            f"the candidate pool has only {sorted(pool.repeat)}"
        )
    known = np.isfinite(pool.model)
    terms = {
        "model": np.where(known, config.model_weight * np.where(known, pool.model, 0.0), -np.inf),
        "repeat": config.repeat_weight * pool.repeat[config.repeat_half_life_days],
        "popularity": config.popularity_weight * pool.popularity,
        "category": config.category_weight * pool.category,
    }
    for name in EXTRA_FEATURES:
        weight = term_weight(config, name)
        if weight and name not in pool.features:
            raise ValueError(f"the blend weighs {name!r} but the candidate pool has no such signal")
        if weight:
            terms[name] = weight * pool.features[name]
    return terms


def blend_scores(pool: Candidates, config: BlendConfig) -> np.ndarray:
    """The blend score of every candidate slot; -inf where it may not be shown."""
    score = sum(contributions(pool, config).values())
    if not config.allow_repeats:
        score = np.where(pool.owned, -np.inf, score)
    return np.where(pool.positions >= 0, score, -np.inf)


def best_slots(
    pool: Candidates, rule: Rule, score: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per customer (row) the slots of the k best candidates under `rule`'s scores `score`, best
    first, at most `rule.max_per_category` of one category when the rule sets it; and whether
    each may be shown (False where the row has fewer candidates, or categories, than k)."""
    cap = getattr(rule, "max_per_category", 0)
    if cap and pool.category_codes is not None:
        return capped_positions(score, pool.category_codes, k, cap)
    slots = best_positions(score, k)
    return slots, np.isfinite(np.take_along_axis(score, slots, axis=1))


def capped_positions(
    score: np.ndarray, codes: np.ndarray, k: int, cap: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns per row, best first, skipping a column whose code (a category; 0:
    none, never limited) already has `cap` better columns in the row, and whether each may be
    shown (False for a row's padding when it has fewer than k such columns). Looks through the
    CAPPED_WIDTH (or 10 k) best columns only."""
    rows, width = score.shape
    width = min(width, max(CAPPED_WIDTH, 10 * k))
    if k == 0 or rows == 0 or width == 0:
        empty = np.zeros((rows, min(k, width)), dtype=np.int64)
        return empty, empty.astype(bool)
    top = best_positions(score, width)
    cats = np.take_along_axis(codes, top, axis=1)
    # how many better columns of the row share each column's category
    order = np.argsort(cats, axis=1, kind="stable")
    grouped = np.take_along_axis(cats, order, axis=1)
    index = np.broadcast_to(np.arange(width), (rows, width))
    starts = np.ones((rows, width), dtype=bool)
    starts[:, 1:] = grouped[:, 1:] != grouped[:, :-1]
    seen = index - np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    better_of_category = np.empty_like(seen)
    np.put_along_axis(better_of_category, order, seen, axis=1)
    finite = np.isfinite(np.take_along_axis(score, top, axis=1))
    allowed = finite & ((better_of_category < cap) | (cats == 0))
    # allowed columns first, in rank order; then the others, never shown
    picked = np.argsort(np.where(allowed, index, width + index), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(top, picked, axis=1), np.take_along_axis(allowed, picked, axis=1)


def recommend(pool: Candidates, rule: Rule, k: int) -> dict[int, list[int]]:
    """Top-k product ids per customer under a blend rule."""
    score = rule.scores(pool)
    best, shown = best_slots(pool, rule, score, k)
    lists = {}
    for row, slots in enumerate(best):
        slots = slots[shown[row]]
        lists[int(pool.customer_ids[row])] = pool.index.product_ids[
            pool.positions[row, slots]
        ].tolist()
    return lists


@dataclass(frozen=True)
class ValidationWeek:
    """A candidate pool and, per slot, whether the customer bought it in the week."""

    pool: Candidates
    relevant: np.ndarray
    ideal: np.ndarray
    customers: int

    @classmethod
    def of(cls, pool: Candidates, targets: Mapping[int, set[int]]) -> "ValidationWeek":
        products = pool.index.product_ids[np.maximum(pool.positions, 0)]
        relevant = np.zeros(pool.positions.shape, dtype=bool)
        ideal = np.zeros(len(pool.customer_ids), dtype=np.float64)
        gains = 1.0 / np.log2(np.arange(2, VALIDATION_K + 2))
        for row, customer in enumerate(pool.customer_ids.tolist()):
            wanted = targets.get(customer)
            if wanted:
                relevant[row] = np.isin(products[row], list(wanted)) & (pool.positions[row] >= 0)
                ideal[row] = gains[: min(len(wanted), VALIDATION_K)].sum()
        return cls(pool, relevant, ideal, len(targets))

    def ndcg(self, rule: Rule) -> float:
        """Mean NDCG@5 of a blend rule over the week's customers (absent from the pool: 0)."""
        if not self.customers:
            return 0.0
        score = rule.scores(self.pool)
        best = best_positions(score, VALIDATION_K)
        hit = np.take_along_axis(self.relevant, best, axis=1) & np.isfinite(
            np.take_along_axis(score, best, axis=1)
        )
        gain = (hit / np.log2(np.arange(2, best.shape[1] + 2))).sum(axis=1)
        per_row = np.divide(gain, self.ideal, out=np.zeros_like(gain), where=self.ideal > 0)
        return float(per_row.sum() / self.customers)


def tune(
    pool: Candidates, targets: Mapping[int, set[int]], allow_repeats: bool
) -> tuple[BlendConfig, float]:
    """The blend with the best NDCG@5 on one validation week, and that NDCG@5."""
    return tune_weeks([(pool, targets)], allow_repeats)


def tune_weeks(
    weeks: Sequence[tuple[Candidates, Mapping[int, set[int]]]], allow_repeats: bool
) -> tuple[BlendConfig, float]:
    """The blend with the best mean NDCG@5 over validation weeks, and that NDCG@5.

    First the best point of WEIGHT_GRID, then coordinate ascent: each weight in turn is moved
    to the value (0, a multiple of its current value, or a point of a wide log scale when it is
    0) that raises the mean NDCG@5 most, for COORDINATE_PASSES passes. Without repeats, the
    weights of signals that only owned products carry stay 0.
    """
    prepared = [ValidationWeek.of(pool, targets) for pool, targets in weeks]

    def value(config: BlendConfig) -> float:
        return float(np.mean([week.ndcg(config) for week in prepared]))

    best, best_value = BlendConfig(allow_repeats=allow_repeats), -1.0
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
        score = value(config)
        if score > best_value:
            best, best_value = config, score
    names = TUNED_WEIGHTS if allow_repeats else TUNED_WEIGHTS_NEW_ONLY
    for _ in range(COORDINATE_PASSES):
        for name in names:
            current = getattr(best, name)
            steps = [current * f for f in STEP_FACTORS] if current else list(LOG_SCALE)
            for candidate in [0.0, *steps]:
                config = replace(best, **{name: candidate})
                score = value(config)
                if score > best_value + MIN_GAIN:
                    best, best_value = config, score
        if allow_repeats:
            for half_life in WEIGHT_GRID["repeat_half_life_days"]:
                config = replace(best, repeat_half_life_days=half_life)
                score = value(config)
                if score > best_value + MIN_GAIN:
                    best, best_value = config, score
    log.info("blend tuned (repeats allowed: %s): %s, NDCG@5 %.4f", allow_repeats, best, best_value)
    return best, best_value


@dataclass(frozen=True)
class RepeatHabits:
    """Customers x catalogue: orders with each product and how due it is; per product, how
    many of its buyers bought it again."""

    orders: sp.csr_matrix
    due: sp.csr_matrix
    product_repeat_rate: np.ndarray


def repeat_habits(
    bought: pl.DataFrame, cutoff: datetime, customer_ids: np.ndarray, index: ProductIndex
) -> RepeatHabits:
    """How each customer rebuys each of their products, before the cutoff.

    due = exp(-(ln((days since last + 1) / (mean days between its orders + 1)))^2 / 2): 1 when
    the customer's usual interval for the product has just passed, falling off on both sides;
    0 for a product bought in one order only. A product's repeat rate is the share of its
    buyers who bought it in two orders or more, shrunk towards the store-wide share.
    """
    per_pair = (
        before(bought, cutoff)
        .group_by("customer_id", "product_id")
        .agg(
            pl.col("order_id").n_unique().alias("orders"),
            pl.col("at").min().alias("first_at"),
            pl.col("at").max().alias("last_at"),
        )
        .with_columns(
            ((pl.lit(cutoff) - pl.col("last_at")).dt.total_seconds() / 86_400.0).alias("since"),
            (
                (pl.col("last_at") - pl.col("first_at")).dt.total_seconds()
                / 86_400.0
                / (pl.col("orders") - 1).clip(lower_bound=1)
            ).alias("interval"),
        )
        .with_columns(
            pl.when(pl.col("orders") >= 2)
            .then((-0.5 * (((pl.col("since") + 1) / (pl.col("interval") + 1)).log() ** 2)).exp())
            .otherwise(0.0)
            .alias("due")
        )
    )
    buyers = per_pair.group_by("product_id").agg(
        pl.len().alias("buyers"), (pl.col("orders") >= 2).sum().alias("repeaters")
    )
    overall = buyers["repeaters"].sum() / max(buyers["buyers"].sum(), 1)
    rate = np.full(len(index), overall, dtype=np.float32)
    positions = index.positions(buyers["product_id"].to_numpy())
    known = positions >= 0
    shrunk = (buyers["repeaters"].to_numpy() + REPEAT_RATE_PRIOR * overall) / (
        buyers["buyers"].to_numpy() + REPEAT_RATE_PRIOR
    )
    rate[positions[known]] = shrunk[known]
    return RepeatHabits(
        orders=customer_product_matrix(per_pair, customer_ids, index, "orders"),
        due=customer_product_matrix(per_pair, customer_ids, index, "due"),
        product_repeat_rate=rate,
    )


def co_purchase_scores(
    bought: pl.DataFrame, profile: sp.csr_matrix, index: ProductIndex, keep: int
) -> sp.csr_matrix:
    """Customers x catalogue: the `keep` products most co-purchased with each customer's own.

    The item-kNN score (`baselines.co_purchase_scorer`) of the customer's products weighted by
    `profile` scaled to sum to 1, so that scores compare across customers, with the target
    exponent CO_PURCHASE_TARGET_EXPONENT.
    """
    scorer = _co_purchase_scorer(bought, profile, index)
    return _top_co_purchases(scorer, np.arange(profile.shape[0]), len(index), keep)


def _co_purchase_scorer(
    bought: pl.DataFrame, profile: sp.csr_matrix, index: ProductIndex
) -> Scorer:
    """`co_purchase_scores`' scorer over rows of `profile`, each row scaled to sum to 1."""
    totals = np.asarray(profile.sum(axis=1)).ravel()
    shares = sp.diags(np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0))
    return co_purchase_scorer(
        bought,
        (shares @ profile).tocsr(),
        index,
        CO_PURCHASE_SMOOTHING,
        CO_PURCHASE_TARGET_EXPONENT,
    )


def _top_co_purchases(
    score: Scorer, rows: np.ndarray, n_products: int, keep: int = CO_PURCHASE_CANDIDATES
) -> sp.csr_matrix:
    """len(rows) x catalogue: each row's `keep` best co-purchase scores (positive ones only)."""
    blocks = []
    for start in range(0, len(rows), CO_PURCHASE_BLOCK):
        block_rows = rows[start : start + CO_PURCHASE_BLOCK]
        scores = score(block_rows)
        top = best_positions(scores, keep)
        values = np.take_along_axis(scores, top, axis=1)
        values[~np.isfinite(values) | (values < 0)] = 0.0
        block = sp.csr_matrix(
            (
                values.ravel(),
                (np.repeat(np.arange(len(block_rows)), top.shape[1]), top.ravel()),
            ),
            shape=(len(block_rows), n_products),
        )
        block.eliminate_zeros()
        blocks.append(block)
    if not blocks:
        return sp.csr_matrix((0, n_products), dtype=np.float32)
    return sp.vstack(blocks).tocsr()


def _popularity(
    bought: pl.DataFrame, cutoff: datetime, index: ProductIndex, days: int
) -> np.ndarray:
    counts = product_popularity(bought, cutoff, days)
    popularity = np.zeros(len(index), dtype=np.float32)
    positions = index.positions(counts["product_id"].to_numpy())
    popularity[positions[positions >= 0]] = counts["customers"].to_numpy()[positions >= 0]
    return popularity


def _strengths(
    bought: pl.DataFrame,
    cutoff: datetime,
    customer_ids: np.ndarray,
    index: ProductIndex,
    half_lives: tuple[float, ...],
) -> dict[float, sp.csr_matrix]:
    """`_strength` for several half-lives in one pass over the customers' orders."""
    age_days = (pl.lit(cutoff) - pl.col("at")).dt.total_seconds() / 86_400.0
    distinct = sorted(set(half_lives))
    pairs = (
        before(bought, cutoff)
        .filter(pl.col("customer_id").is_in(customer_ids.tolist()))
        .unique(["customer_id", "order_id", "product_id"])
        .group_by("customer_id", "product_id")
        .agg((0.5 ** (age_days / h)).sum().alias(f"strength_{i}") for i, h in enumerate(distinct))
    )
    return {
        h: customer_product_matrix(pairs, customer_ids, index, f"strength_{i}")
        for i, h in enumerate(distinct)
    }


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


def _category_best(
    category_strength: np.ndarray, categories: np.ndarray, model_score: ModelScore
) -> np.ndarray:
    """Per customer, the products of their TOP_CATEGORIES strongest categories that the
    two-tower model scores highest (TOP_CATEGORIES * CATEGORY_CANDIDATES in all)."""
    width = TOP_CATEGORIES * CATEGORY_CANDIDATES
    out = np.full((len(category_strength), width), -1, dtype=np.int64)
    if not len(category_strength):
        return out
    order = np.argsort(categories, kind="stable")
    bounds = np.searchsorted(categories[order], np.arange(category_strength.shape[1] + 1))
    strongest = np.argsort(-category_strength, axis=1, kind="stable")[:, :TOP_CATEGORIES]
    chosen = (strongest > 0) & (np.take_along_axis(category_strength, strongest, axis=1) > 0)
    members = [
        np.concatenate([order[bounds[c] : bounds[c + 1]] for c in row[keep]] or [[]])
        for row, keep in zip(strongest, chosen, strict=True)
    ]
    longest = max((len(m) for m in members), default=0)
    if longest == 0:
        return out
    padded = np.full((len(members), longest), -1, dtype=np.int64)
    for row, positions in enumerate(members):
        padded[row, : len(positions)] = positions
    scores = np.where(padded >= 0, model_score(padded), -np.inf)
    top = best_positions(scores, min(width, longest))
    picked = np.take_along_axis(padded, top, axis=1)
    found = np.isfinite(np.take_along_axis(scores, top, axis=1))
    out[:, : top.shape[1]] = np.where(found, picked, -1)
    return out


def _strongest(matrix: sp.csr_matrix, k: int) -> np.ndarray:
    """Per row, the positions of its k largest entries, padded with -1."""
    out = np.full((matrix.shape[0], k), -1, dtype=np.int64)
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        top = np.argsort(-matrix.data[start:end], kind="stable")[:k]
        out[row, : len(top)] = matrix.indices[start:end][top]
    return out


def _row_max(matrix: sp.csr_matrix) -> np.ndarray:
    """The largest entry of each row, 1 for a row without a positive entry."""
    peak = np.asarray(matrix.max(axis=1).todense(), dtype=np.float32).ravel()
    return np.where(peak > 0, peak, 1.0).astype(np.float32)


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

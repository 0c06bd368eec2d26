"""The weekly email: the top products of every customer, from a trained model, chunk by chunk.

No Dagster here, so the same code runs as an Azure ML batch endpoint over mini-batches of
customers (`WeeklyScorer.score(rows)` for one mini-batch) as well as over the whole customer
table at once (`weekly_recommendations`).

Everything is as of the start of the week (Monday 00:00 UTC): purchases, profiles, popularity and
the catalogue before it, so the table for a past week reproduces what would have been sent then.
Each customer's products are ranked by the shipped blend (`blend.py`): their two-tower top
products, what they bought before, the store's popular products and the best sellers of their
favourite categories, scored by one rule: with repeats allowed, the learned rule fit beside the
promoted model when it has one (`learned.py`), else the task's shipped weights. The email
team's rules:

- no product twice for a customer, and exactly `k` products each (a customer whose candidates run
  short is topped up with the week's best sellers they may be shown);
- no product that is discontinued or not yet on sale at the start of the week;
- already-bought products only when the blend configuration allows repeats;
- customers with no purchase before the week still get `k` products: from their profile through
  the two-tower model and from popularity, marked by the reason code.

Reason codes say which part of the score carried the product: `bought_before`,
`similar_to_your_purchases`, `popular_with_customers_like_you` (what customers who shop like
them buy, by ALS preference; without a purchase history, from the profile through the model),
`popular_in_your_categories`, `popular_now` and `in_this_weeks_mailer` (featured in the week's
mailer, by the promotion plan).
"""

import collections
import logging
import warnings
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta

import numpy as np
import polars as pl

from contoso_recs.recommender import batch_scoring
from contoso_recs.recommender.blend import (
    MODEL_CANDIDATES,
    BlendConfig,
    Rule,
    Signals,
    best_slots,
    contributions,
    term_weight,
)
from contoso_recs.recommender.data import (
    LakeFrames,
    as_cutoff,
    before,
    catalogue,
    purchases,
)
from contoso_recs.recommender.encoding import HISTORY_DAYS, product_positions
from contoso_recs.recommender.evaluate import category_codes
from contoso_recs.recommender.learned import FEATURES, HALF_LIVES, LearnedRule
from contoso_recs.recommender.ranking import ProductIndex
from contoso_recs.recommender.train import TrainedModel

log = logging.getLogger(__name__)

K = 5
# Customers per batch: their candidate pools (about 700 products each) stay near 300 MB.
CHUNK_CUSTOMERS = 10_000
# Customers per gather of product vectors when scoring a batch's candidates (a customer's
# favourite categories can hold thousands of products).
SCORE_ROWS = 128
# Under a category limit, the top-up looks through this many best sellers per empty slot before
# the whole list.
TOP_UP_LOOK = 20
BOUGHT_BEFORE = "bought_before"
SIMILAR = "similar_to_your_purchases"
LIKE_YOU = "popular_with_customers_like_you"
IN_YOUR_CATEGORIES = "popular_in_your_categories"
POPULAR_NOW = "popular_now"
IN_THE_MAILER = "in_this_weeks_mailer"
# The mailer names a product's reason only when most stores' mailers feature it, since the
# customer's own store's may not.
MAILER_REASON_MIN_SHARE = 0.5
REASONS = (BOUGHT_BEFORE, SIMILAR, LIKE_YOU, IN_YOUR_CATEGORIES, POPULAR_NOW, IN_THE_MAILER)
TABLE_SCHEMA = {
    "week": pl.Date,
    "customer_id": pl.Int64,
    "rank": pl.Int8,
    "product_id": pl.Int64,
    "score": pl.Float32,
    "reason": pl.String,
    "product_name": pl.String,
    "price": pl.Float64,
    "image_ref": pl.String,
    "model_version": pl.String,
}
# What `WeeklyScorer.score` returns, before the product details are joined.
RANKED_SCHEMA = {
    c: TABLE_SCHEMA[c] for c in ("customer_id", "rank", "product_id", "score", "reason")
}


def eligible_customers(frames: LakeFrames, as_of: datetime) -> np.ndarray:
    """Sorted ids of customers known before the week: a profile created, or a purchase made."""
    profiled = before(frames.customers, as_of, "created_at").select("customer_id")
    bought = before(purchases(frames), as_of).select("customer_id")
    ids = pl.concat([profiled, bought]).unique()["customer_id"].sort()
    return ids.to_numpy().astype(np.int64)


@dataclass
class WeeklyScorer:
    """Everything the week's scoring needs, prepared once; `score` handles one batch of rows."""

    as_of: datetime
    config: Rule  # the weights of a task, or the learned rule fit with the model
    k: int
    trained: TrainedModel | None  # None: no model passed the gate yet, the blend goes without
    customer_ids: np.ndarray
    bought: pl.DataFrame  # purchases before the week, sorted by customer
    bought_customers: np.ndarray  # the customer_id column of `bought`
    views: pl.DataFrame  # signed-in product views of the half-year before the week, by customer
    views_customers: np.ndarray  # the customer_id column of `views`
    profiles: pl.DataFrame
    index: ProductIndex
    signals: Signals
    product_vectors: np.ndarray  # catalogue order; zeros for products the model never saw
    known_to_model: np.ndarray
    prepared: batch_scoring.PreparedProducts
    best_sellers: np.ndarray  # catalogue positions, most bought first

    @classmethod
    def prepare(
        cls,
        frames: LakeFrames,
        trained: TrainedModel | None,
        week_start: date | datetime,
        config: Rule,
        k: int = K,
        customer_ids: np.ndarray | None = None,
    ) -> "WeeklyScorer":
        """Prepare the week; without a model (`trained` None) the blend ranks by its other
        signals alone: repeat purchases, co-purchases, categories, best sellers and, for a rule
        that weighs it (blend B), ALS preference."""
        as_of = as_cutoff(week_start)
        products = catalogue(frames, as_of, current=True)
        if products.height < k:
            raise ValueError(
                f"only {products.height} products are on sale at {as_of:%Y-%m-%d}: "
                f"cannot recommend {k} to each customer"
            )
        index = ProductIndex(products["product_id"].to_numpy().astype(np.int64))
        bought = before(purchases(frames), as_of).sort("customer_id", "at")
        views = (
            before(frames.product_views, as_of, "viewed_at")
            .filter(
                pl.col("customer_id").is_not_null()
                & (pl.col("viewed_at") >= as_of - timedelta(days=HISTORY_DAYS))
            )
            .select("customer_id", "product_id", "viewed_at", "dwell_seconds")
            .sort("customer_id", "viewed_at")
        )
        if customer_ids is None:
            customer_ids = eligible_customers(frames, as_of)
        else:  # in any order, even twice: each customer once, in id order (as signals need)
            customer_ids = np.unique(np.asarray(customer_ids, dtype=np.int64))
        if trained is None:
            if isinstance(config, LearnedRule):  # learned with model scores: not without them
                config = config.explain
            config = replace(config, model_weight=0.0)
            known = np.ones(len(index), dtype=bool)
            vectors = np.zeros((len(index), 1), dtype=np.float32)
        else:
            positions = product_positions(trained.vocab, index.product_ids)
            known = positions > 0
            vectors = trained.scoring_product_vectors(bought, as_of)[positions]
            vectors[~known] = 0.0
        half_lives = (config.repeat_half_life_days,)
        if isinstance(config, LearnedRule):
            half_lives = tuple(sorted({*half_lives, *HALF_LIVES}))
            uses_als = "als" in FEATURES or config.explain.als_weight > 0  # reasons: explain
        else:
            uses_als = config.als_weight > 0
        signals = Signals.of(
            bought,
            as_of,
            customer_ids,
            index,
            category_codes(products),
            half_lives,
            als=uses_als,
            promotions=frames.promotions,
        )
        log.info(
            "weekly scoring as of %s: %d customers, %d products on sale (%d known to the model)",
            f"{as_of:%Y-%m-%d}",
            len(customer_ids),
            len(index),
            int(known.sum()),
        )
        return cls(
            as_of=as_of,
            config=config,
            k=k,
            trained=trained,
            customer_ids=customer_ids,
            bought=bought,
            bought_customers=bought["customer_id"].to_numpy(),
            views=views,
            views_customers=views["customer_id"].to_numpy(),
            profiles=before(frames.customers, as_of, "created_at"),
            index=index,
            signals=signals,
            product_vectors=vectors,
            known_to_model=known,
            prepared=batch_scoring.prepare_products(vectors, exclude_for_all=~known),
            best_sellers=np.argsort(-signals.popularity, kind="stable"),
        )

    @property
    def weights(self) -> BlendConfig:
        """The task's weights: they rank, or (with a learned rule) name the reason."""
        return self.config.explain if isinstance(self.config, LearnedRule) else self.config

    def score(self, rows: np.ndarray) -> pl.DataFrame:
        """The top-k rows (customer_id, rank, product_id, score, reason) of customers `rows`
        (positions in `customer_ids`, in any order; the table comes in customer order)."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        ids = self.customer_ids[rows]
        if not len(ids):
            return pl.DataFrame(schema=RANKED_SCHEMA)
        start, stop = np.searchsorted(self.bought_customers, [ids[0], ids[-1] + 1])
        history = self.bought.slice(start, stop - start)
        start, stop = np.searchsorted(self.views_customers, [ids[0], ids[-1] + 1])
        viewed = self.views.slice(start, stop - start)
        owned = self.signals.strengths[self.config.repeat_half_life_days][rows]
        if self.trained is None:
            vectors = np.zeros((len(ids), 1), dtype=np.float32)
            model_top = np.full((len(ids), 0), -1, dtype=np.int64)
        else:
            vectors = self.trained.scoring_customer_vectors(
                history, self.profiles, ids, self.as_of, viewed
            )
            model_top, _ = batch_scoring.top_k(
                vectors,
                self.prepared,
                min(MODEL_CANDIDATES, self.prepared.count) or 1,
                exclude=None if self.config.allow_repeats else (owned.indptr, owned.indices),
            )
            model_top = model_top.astype(np.int64)

        def model_score(pool: np.ndarray) -> np.ndarray:
            safe = np.maximum(pool, 0)
            scores = np.empty(pool.shape, dtype=np.float32)
            for first in range(0, len(pool), SCORE_ROWS):
                part = slice(first, first + SCORE_ROWS)
                gathered = self.product_vectors[safe[part]]
                scores[part] = np.einsum("rd,rsd->rs", vectors[part], gathered)
            return np.where(self.known_to_model[safe], scores, -np.inf)

        pool = self.signals.pool(rows, model_top, model_score)
        scores = self.config.scores(pool)
        slots, shown = best_slots(pool, self.config, scores, self.k)
        chosen = np.take_along_axis(pool.positions, slots, axis=1)
        chosen_scores = np.where(shown, np.take_along_axis(scores, slots, axis=1), -np.inf)
        reasons = self._reasons(pool, slots, has_history=np.diff(owned.indptr) > 0)
        short = ~np.isfinite(chosen_scores)
        if short.any():
            self._top_up(chosen, chosen_scores, reasons, short, owned)
        return pl.DataFrame(
            {
                "customer_id": np.repeat(ids, self.k),
                "rank": np.tile(np.arange(1, self.k + 1, dtype=np.int8), len(ids)),
                "product_id": self.index.product_ids[chosen.ravel()],
                "score": chosen_scores.ravel().astype(np.float32),
                "reason": np.asarray(REASONS)[reasons.ravel()],
            }
        )

    def _reasons(self, pool, slots: np.ndarray, has_history: np.ndarray) -> np.ndarray:
        """Index into REASONS per chosen slot: the score term that lifted the product most,
        among the terms the rule weighs that gave the product something (`popular_now` when
        none did).

        A term's lift is its value for the product minus its median over the candidates the
        customer may be shown, so a term that is large for every candidate (popularity) does
        not claim every product. Co-purchase counts as "similar to your purchases", the trend
        as "popular now", ALS preference as "popular with customers like you", the mailer share
        as "in this week's mailer" (only for a product at least MAILER_REASON_MIN_SHARE of the
        stores' mailers feature); the part of the model's score its recent-popularity term gave
        as "popular now".
        """
        terms = {
            name: term
            for name, term in contributions(pool, self.weights).items()
            if term_weight(self.weights, name)
        }
        if self.trained is not None and "model" in terms:
            # what the model's recent-popularity term gave a product (the last column of its
            # scoring vector) reads as popular now, not as the customer's taste
            recent = (
                term_weight(self.weights, "model")
                * self.product_vectors[np.maximum(pool.positions, 0), -1]
            )
            terms["recent_buyers"] = np.where(np.isfinite(terms["model"]), recent, 0.0)
            terms["model"] = terms["model"] - terms["recent_buyers"]
        shown = pool.positions >= 0  # the candidates the customer may be shown
        if not self.config.allow_repeats:
            shown &= ~pool.owned
        groups = {
            "model": ("model", "co_purchase") if self.trained else ("co_purchase",),
            "category": ("category",),
            "popularity": ("popularity", "trend", "recent_buyers"),
            "like_you": ("als",),
            "mailer": ("mailer",),
        }
        if "mailer" in terms:  # a product few stores feature is not named for the mailer
            widely = pool.features["mailer"] >= MAILER_REASON_MIN_SHARE
            terms["mailer"] = np.where(widely, terms["mailer"], 0.0)
        lifts = []
        for names in groups.values():
            present = [terms[name] for name in names if name in terms]
            value = sum(present) if present else np.full(pool.positions.shape, -np.inf)
            finite = np.where(np.isfinite(value) & shown, value, np.nan)
            with warnings.catch_warnings():  # a row with no finite value has no median: 0
                warnings.simplefilter("ignore", RuntimeWarning)
                typical = np.nan_to_num(np.nanmedian(finite, axis=1, keepdims=True))
            chosen = np.take_along_axis(value, slots, axis=1)
            # a term that gave the product nothing is not why it is shown
            lifts.append(np.where(chosen == 0, -np.inf, chosen - typical))
        lifts = np.stack(lifts)
        lifts[np.isnan(lifts)] = -np.inf
        leading = np.where(
            np.isfinite(lifts).any(axis=0),
            np.argmax(lifts, axis=0),
            list(groups).index("popularity"),
        )
        from_model = np.where(has_history[:, None], REASONS.index(SIMILAR), REASONS.index(LIKE_YOU))
        reasons = np.choose(
            leading,
            [
                from_model,
                np.full(slots.shape, REASONS.index(IN_YOUR_CATEGORIES)),
                np.full(slots.shape, REASONS.index(POPULAR_NOW)),
                np.full(slots.shape, REASONS.index(LIKE_YOU)),
                np.full(slots.shape, REASONS.index(IN_THE_MAILER)),
            ],
        )
        owned = np.take_along_axis(pool.owned, slots, axis=1)
        return np.where(owned, REASONS.index(BOUGHT_BEFORE), reasons)

    def _top_up(
        self,
        chosen: np.ndarray,
        chosen_scores: np.ndarray,
        reasons: np.ndarray,
        short: np.ndarray,
        owned,
    ) -> None:
        """Fill the empty slots of a row with the week's best sellers it may be shown (under a
        category limit, those of categories the row does not hold enough of first)."""
        popularity_term = self.weights.popularity_weight * np.log1p(self.signals.popularity)
        cap = getattr(self.config, "max_per_category", 0)
        for row in np.flatnonzero(short.any(axis=1)):
            shown = chosen[row, ~short[row]].tolist()
            taken = set(shown)
            if not self.config.allow_repeats:
                taken |= set(owned.indices[owned.indptr[row] : owned.indptr[row + 1]].tolist())
            wanted = int(short[row].sum())
            look = len(taken) + (TOP_UP_LOOK * self.k if cap else self.k)
            fill = [p for p in self.best_sellers[:look] if p not in taken]
            if cap:
                fill = self._categories_first(shown, fill, wanted, cap)
            if len(fill) < wanted or (cap and not self._within_cap(shown, fill, cap)):
                fill = [p for p in self.best_sellers if p not in taken]
                if cap:
                    fill = self._categories_first(shown, fill, wanted, cap)
            for slot, position in zip(np.flatnonzero(short[row]), fill, strict=False):
                chosen[row, slot] = position
                chosen_scores[row, slot] = popularity_term[position]
                reasons[row, slot] = REASONS.index(POPULAR_NOW)
            if (chosen_scores[row] == -np.inf).any():
                raise ValueError(
                    f"fewer than {self.k} products may be shown to a customer: the catalogue "
                    "on sale is too small for the repurchase policy"
                )

    def _within_cap(self, shown: list[int], fill: list[int], cap: int) -> bool:
        """Whether `shown` and `fill` together hold at most `cap` of each category."""
        held = collections.Counter(self.signals.categories[[*shown, *fill]].tolist())
        return all(n <= cap for code, n in held.items() if code != 0)

    def _categories_first(self, shown: list[int], fill: list[int], n: int, cap: int) -> list[int]:
        """The first `n` of `fill`, taking a product of a category `shown` holds `cap` of
        (with those taken before it) only when too few others are left."""
        codes = self.signals.categories
        held = collections.Counter(codes[shown].tolist())
        within, beyond = [], []
        for position in fill:
            code = int(codes[position])
            if code == 0 or held[code] < cap:
                within.append(position)
                held[code] += 1
                if len(within) == n:
                    break
            else:
                beyond.append(position)
        return (within + beyond)[:n]


def weekly_recommendations(
    frames: LakeFrames,
    trained: TrainedModel | None,
    week_start: date | datetime,
    config: Rule,
    model_version: str,
    k: int = K,
    chunk_customers: int = CHUNK_CUSTOMERS,
    image_refs: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The week's table: k rows per eligible customer, with product name, price and image.

    `image_refs` maps product_id to image_ref (where the email system finds the picture).
    Without a model (`trained` None) the blend ranks by its other signals alone.
    """
    scorer = WeeklyScorer.prepare(frames, trained, week_start, config, k)
    return weekly_table(scorer, frames, model_version, chunk_customers, image_refs)


def weekly_table(
    scorer: WeeklyScorer,
    frames: LakeFrames,
    model_version: str,
    chunk_customers: int = CHUNK_CUSTOMERS,
    image_refs: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The table of a prepared week: every customer scored a chunk at a time, with details."""
    n = len(scorer.customer_ids)
    parts = []
    for start in range(0, n, chunk_customers):
        parts.append(scorer.score(np.arange(start, min(start + chunk_customers, n))))
        log.info("scored %d of %d customers", min(start + chunk_customers, n), n)
    ranked = pl.concat(parts) if parts else pl.DataFrame(schema=RANKED_SCHEMA)
    details = frames.products.select(
        "product_id", pl.col("name").alias("product_name"), "price"
    ).join(
        image_refs if image_refs is not None else pl.DataFrame(schema={"product_id": pl.Int64}),
        on="product_id",
        how="left",
    )
    if "image_ref" not in details.columns:
        details = details.with_columns(pl.lit(None, dtype=pl.String).alias("image_ref"))
    return (
        ranked.join(details, on="product_id", how="left")
        .with_columns(
            pl.lit(scorer.as_of.date()).alias("week"),
            pl.lit(model_version).alias("model_version"),
        )
        .select([pl.col(c).cast(t) for c, t in TABLE_SCHEMA.items()])
        .sort("customer_id", "rank")
    )

"""The learned blend rule: a LightGBM ranker over the blend's candidate signals.

The fixed weights of `blend.SHIPPED_BLENDS` were tuned on one retailer's weeks. The learned rule
is fit on the retailer's own data instead: on a week the two-tower model never saw, each
customer's candidates (`blend.Candidates`) are labelled with whether the customer bought them
that week, and a LambdaRank model learns to order them (NDCG, truncated at 10). It reads the
signals the task-A weights do (two-tower cosine, decayed repeat strengths, store
popularity and trend, category strength, co-purchase, order counts, how due a product is and
how often it is bought again) and the week's mailer, so it can learn, say, that a product
bought once long ago matters less for a customer with many repeat products than for a customer
with few.

Only task A (repeats allowed) is learned. On the validation weeks 2017-10-16 to 2017-11-27 of The
Complete Journey, fit on two weeks and scored on a later one with a newer model, the rule lifted
task-A NDCG@5 over the shipped weights in each of the four weeks tried (+.006 to +.011; mean
.3525 against .3448); fit on a week and scored on the next with the same model (as the
weekly retrain does), by +.005, +.012 and +.0005 (the last fit on Thanksgiving week). Starting
the trees from the weights' score instead did no better (+.002 to +.010). For task B, with one
bought product in about 500 candidates, it fell below the weights (NDCG@5 .0152 against
.0179), so task B keeps its weights. ALS preference as one more signal moved task-A NDCG@5 by
+.0005 on average on the validation weeks (HR@5 -.0013; `experiments.learned_rule_als`), not
worth its fit, so the rule does not read it. The week's mailer (the share of stores whose mailer
features the product, from the promotion plan) raised NDCG@5 in each of five setups fit on four
validation weeks, by +.0036 on average (`experiments.learned_rule_mailer`), so it does.

Fitting takes seconds (a week of 1,400 customers × 50 candidates) and needs no second model,
so the weekly retrain refits it at every run: on the candidate model's holdout week and the
RULE_WEEKS - 1 weeks before it, whose rows (`WeekRows`) earlier retrains kept beside their
models. Each earlier week was scored by its own candidate, a model trained before that week,
so no week the rule learns from was seen by the model that scored it. A rule that learns from
several weeks ranked better on every validation week tried than one fit on fewer, most of all
after a holiday week (RULE_WEEKS).
"""

import hashlib
import io
import logging
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np

from contoso_recs.files import write_bytes_atomically, write_text_atomically
from contoso_recs.recommender.blend import (
    EXTRA_FEATURES,
    WEIGHT_GRID,
    BlendConfig,
    Candidates,
    ValidationWeek,
    blend_scores,
)
from contoso_recs.recommender.ranking import best_positions

log = logging.getLogger(__name__)

# The repeat half-lives the rule reads (the pool must carry each of them).
HALF_LIVES = WEIGHT_GRID["repeat_half_life_days"]
FEATURES = (
    "model",
    "model_gap",
    "popularity",
    "category",
    "owned",
    *(f"repeat_{int(h)}" for h in HALF_LIVES),
    "co_purchase",
    "trend",
    "frequency",
    "due",
    "repeat_rate",
    "mailer",
    "owned_in_pool",
)
# Chosen on the validation weeks above among 100-400 rounds, 7-31 leaves, 50-200 rows a leaf
# and the LambdaRank, XE-NDCG and binary objectives: all within .003 NDCG@5 of each other.
PARAMETERS = {
    "objective": "lambdarank",
    "lambdarank_truncation_level": 10,
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 200,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "seed": 7,
    "deterministic": True,
    "force_row_wise": True,
    "verbose": -1,
}
ROUNDS = 200
# The rule reorders each customer's SHORTLIST best candidates by the weights (`explain`), in
# training as in scoring. Predicting every candidate (about 400 a customer) would cost more than
# the rest of the weekly scoring; on the validation weeks 50 scored as well as all of them
# (NDCG@5 .3525 both, weights .3448) at a quarter of the time.
SHORTLIST = 50
# Fewer customers with a bought product among their candidates than this: no rule is fit and
# the fixed weights rank (a small store's week says too little to learn from).
MIN_CUSTOMERS = 100
FOLDS = 2
# The rule learns from the week a model is evaluated on and up to RULE_WEEKS - 1 earlier weeks,
# their rows kept beside earlier models (ROWS_FILE, at most KEPT_CUSTOMERS customers a week).
# On validation weeks of The Complete Journey, more weeks ranked better every time: scored on
# 2017-11-27, fit on 11-20 alone NDCG@5 .3688, with 11-06 .3738, with 10-30 and 11-06 .3773;
# on 11-20, fit on two weeks .3141 and on four .3156; on 11-06, on two .3630 and three .3677
# (`python -m experiments.learned_rule_weeks`). One holiday week alone (Thanksgiving, 11-20)
# taught a rule that ranked below the weights on the week after it. Past four the gain fades:
# six weeks against four moved NDCG@5 by +.0002 to +.0017 in four setups, four against two on
# 10-30 by -.0006, while each week adds its rows to every fit.
RULE_WEEKS = 4
KEPT_CUSTOMERS = 20_000
FILE = "blend_rule_A.txt"
ROWS_FILE = "blend_rule_A_rows.npz"
HEADER = "# contoso_recs blend rule, customers"


def features(pool: Candidates) -> np.ndarray:
    """rows x slots x FEATURES of a candidate pool (NaN where the model cannot score)."""
    missing = [h for h in HALF_LIVES if h not in pool.repeat]
    if missing:
        raise ValueError(f"the candidate pool has no repeat strength for half-lives {missing}")
    valid = pool.positions >= 0
    model = np.where(np.isfinite(pool.model) & valid, pool.model, np.nan).astype(np.float32)
    known = np.isfinite(model).any(axis=1, keepdims=True)
    best = np.nanmax(np.where(known, model, 0.0), axis=1, keepdims=True)
    owned_in_pool = np.log1p((pool.owned & valid).sum(axis=1, keepdims=True))
    columns = {
        "model": model,
        "model_gap": model - best,
        "popularity": pool.popularity,
        "category": pool.category,
        "owned": pool.owned,
        **{f"repeat_{int(h)}": pool.repeat[h] for h in HALF_LIVES},
        **{name: pool.features[name] for name in EXTRA_FEATURES if name in FEATURES},
        "owned_in_pool": np.broadcast_to(owned_in_pool, pool.positions.shape),
    }
    return np.stack([np.asarray(columns[name], dtype=np.float32) for name in FEATURES], axis=-1)


@dataclass(frozen=True)
class LearnedRule:
    """A fitted ranker; `scores` ranks a pool like `blend.blend_scores` does. `explain` is the
    weighted rule of the same task, whose terms name the reason shown beside a product."""

    booster: lgb.Booster
    explain: BlendConfig
    customers: int  # customers with a bought product among their candidates it was fit on

    @property
    def allow_repeats(self) -> bool:
        return self.explain.allow_repeats

    @property
    def repeat_half_life_days(self) -> float:
        return self.explain.repeat_half_life_days

    def scores(self, pool: Candidates) -> np.ndarray:
        """The rule's score of every candidate slot on the shortlist; -inf elsewhere and where
        the product may not be shown."""
        rows, slots = shortlist(pool, self.explain)
        out = np.full(pool.positions.shape, -np.inf)
        if len(rows):
            x = features(pool)[rows, slots]
            out[rows, slots] = self.booster.predict(x)
        return out

    def save(self, out_dir: str | Path) -> Path:
        """Write the rule beside a model: a header line with the customers it was fit on and
        the SHA-256 of the LightGBM model text, then that text; atomically (a rename)."""
        text = self.booster.model_to_string()
        return write_text_atomically(
            Path(out_dir) / FILE, f"{HEADER} {self.customers} sha256 {_digest(text)}\n{text}"
        )

    @classmethod
    def load(cls, bundle_dir: str | Path, explain: BlendConfig) -> "LearnedRule | None":
        """The rule saved beside a model, or None when the model has none (older models, or a
        week too small to learn from). UnusableRule when the file cannot rank this version's
        signals (damaged, or written by a version with other signals)."""
        path = Path(bundle_dir) / FILE
        if not path.exists():
            return None
        # LightGBM aborts the whole process on a damaged model text: check it is whole first
        try:
            header, _, text = path.read_text(encoding="utf-8").partition("\n")
        except (OSError, UnicodeDecodeError) as error:
            raise UnusableRule(f"{path} is not a readable blend rule ({error})") from error
        fields = header.removeprefix(HEADER).split()
        if len(fields) != 3 or not fields[0].isdigit() or fields[2] != _digest(text):
            raise UnusableRule(f"{path} is not a readable blend rule (damaged or cut short)")
        customers = int(fields[0])
        try:
            booster = lgb.Booster(model_str=text)
        except lgb.basic.LightGBMError as error:
            raise UnusableRule(f"{path} is not a readable blend rule ({error})") from error
        if booster.feature_name() != list(FEATURES):
            raise UnusableRule(
                f"{path} ranks by {booster.feature_name()}, not by this version's signals "
                f"{list(FEATURES)}"
            )
        return cls(booster, explain, customers)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class UnusableRule(ValueError):
    """A saved rule that cannot rank: evaluating the model again refits it."""


@dataclass(frozen=True)
class WeekRows:
    """What the rule learns from one week: the shortlist's signals (rows x FEATURES) of each
    customer with a bought product among them, whether it was bought, and the customers'
    group sizes, in customer order. `week` is the week's first day (YYYY-MM-DD)."""

    week: str
    x: np.ndarray
    labels: np.ndarray
    groups: np.ndarray

    @classmethod
    def of(
        cls, pool: Candidates, targets: Mapping[int, set[int]], explain: BlendConfig, week: str
    ) -> "WeekRows":
        relevant = ValidationWeek.of(pool, targets).relevant
        allowed = np.zeros(pool.positions.shape, dtype=bool)
        allowed[shortlist(pool, explain)] = True
        x = features(pool)
        rows = np.flatnonzero((relevant & allowed).any(axis=1))
        keep = allowed[rows]
        return cls(
            week=week,
            x=x[rows][keep],
            labels=relevant[rows][keep].astype(np.int8),
            groups=keep.sum(axis=1).astype(np.int64),
        )

    @property
    def customers(self) -> int:
        return len(self.groups)

    def sample(self, customers: int, seed: int = 7) -> "WeekRows":
        """At most `customers` customers' rows, drawn at random (seeded), in customer order."""
        if self.customers <= customers:
            return self
        chosen = np.sort(np.random.default_rng(seed).choice(self.customers, customers, False))
        ends = np.cumsum(self.groups)
        rows = np.concatenate([np.arange(ends[c] - self.groups[c], ends[c]) for c in chosen])
        return WeekRows(self.week, self.x[rows], self.labels[rows], self.groups[chosen])

    def save(self, out_dir: str | Path) -> Path:
        """Keep the week's rows beside a model (ROWS_FILE, at most KEPT_CUSTOMERS customers),
        with when they were written, so later retrains learn from this week too; atomically
        (a rename)."""
        kept = self.sample(KEPT_CUSTOMERS)
        content = io.BytesIO()
        np.savez_compressed(
            content,
            week=np.asarray(self.week),
            written_at=np.asarray(datetime.now(UTC).isoformat()),
            features=np.asarray(FEATURES),
            x=kept.x.astype(np.float32),
            labels=kept.labels.astype(np.int8),
            groups=kept.groups.astype(np.int64),
        )
        return write_bytes_atomically(Path(out_dir) / ROWS_FILE, content.getvalue())

    @classmethod
    def load(cls, bundle_dir: str | Path) -> "WeekRows | None":
        """The week's rows kept beside a model; None when there are none, and (with a warning)
        when they cannot be read or are not rows of this version's FEATURES."""
        return _read_rows(Path(bundle_dir) / ROWS_FILE, whole=True)


def _read_rows(path: Path, whole: bool) -> "WeekRows | tuple[str, str] | None":
    """The rows file at `path` (whole) or only its week and when it was written (not whole,
    without reading the rows); None, with a warning when something is there, when it is not a
    readable rows file of this version."""
    if not path.is_file():
        if path.exists():
            log.warning("%s is not a file of rule rows, left out", path)
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            week, written_at = str(saved["week"][()]), str(saved["written_at"][()])
            date.fromisoformat(week)
            if not whole:
                return week, written_at
            names = tuple(str(n) for n in saved["features"])
            rows = WeekRows(week, saved["x"], saved["labels"], saved["groups"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        log.warning("%s is not a readable file of rule rows, left out (%s)", path, error)
        return None
    whole_rows = (
        rows.x.dtype == np.float32
        and rows.labels.dtype == np.int8
        and rows.groups.dtype == np.int64
        and rows.groups.ndim == rows.labels.ndim == 1
        and (rows.groups > 0).all()
        and rows.x.shape == (int(rows.groups.sum()), len(FEATURES))
        and rows.labels.shape == (len(rows.x),)
    )
    if names != FEATURES or not whole_rows:
        log.warning("%s does not hold rule rows of this version's signals, left out", path)
        return None
    return rows


def earlier_weeks(bundle_dirs: Sequence[str | Path], week: str) -> list[WeekRows]:
    """The rows the rule learns from besides `week`'s own: of the weeks kept beside
    `bundle_dirs`, the RULE_WEEKS - 1 latest that end by the day `week` starts and do not
    overlap each other, latest first; of a week kept twice, the rows written last. Only
    those are read whole."""
    found = []
    for bundle_dir in bundle_dirs:
        path = Path(bundle_dir) / ROWS_FILE
        if (kept := _read_rows(path, whole=False)) is not None:
            found.append((*kept, path))
    chosen: list[WeekRows] = []
    next_start = date.fromisoformat(week)
    for start, _, path in sorted(found, reverse=True):
        if len(chosen) == RULE_WEEKS - 1:
            break
        if date.fromisoformat(start) + timedelta(days=7) > next_start:
            continue  # overlaps the week, or a week already chosen
        if (rows := _read_rows(path, whole=True)) is not None:
            chosen.append(rows)
            next_start = date.fromisoformat(start)
    return chosen


def fit(
    weeks: Sequence[tuple[Candidates, Mapping[int, set[int]]]],
    explain: BlendConfig,
    threads: int | None = None,
) -> LearnedRule | None:
    """The rule fit on weeks of candidates and what each customer bought in that week; None
    when fewer than MIN_CUSTOMERS customers have a bought product among their candidates."""
    return fit_rows(
        [WeekRows.of(pool, targets, explain, "") for pool, targets in weeks], explain, threads
    )


def fit_rows(
    weeks: Sequence[WeekRows],
    explain: BlendConfig,
    threads: int | None = None,
    purpose: str = "",
) -> LearnedRule | None:
    """The rule fit on the rows of one or more weeks (`WeekRows`); None when they hold fewer
    than MIN_CUSTOMERS customers. `purpose` says in the log what the fit is for."""
    customers = sum(week.customers for week in weeks)
    if customers < MIN_CUSTOMERS:
        log.info(
            "learned blend rule not fit: %d customers with a bought candidate, %d needed",
            customers,
            MIN_CUSTOMERS,
        )
        return None
    data = lgb.Dataset(
        np.concatenate([week.x for week in weeks]),
        np.concatenate([week.labels for week in weeks]).astype(np.int32),
        group=np.concatenate([week.groups for week in weeks]),
        feature_name=list(FEATURES),
    )
    parameters = {**PARAMETERS, **({"num_threads": threads} if threads else {})}
    booster = lgb.train(parameters, data, num_boost_round=ROUNDS)
    log.info(
        "learned blend rule%s fit on %d customers of %d week%s",
        f" ({purpose})" if purpose else "",
        customers,
        len(weeks),
        "" if len(weeks) == 1 else "s",
    )
    return LearnedRule(booster, explain, customers)


def shortlist(pool: Candidates, explain: BlendConfig) -> tuple[np.ndarray, np.ndarray]:
    """(rows, slots) of each customer's SHORTLIST best candidates by the weights, among those
    that may be shown."""
    weighted = blend_scores(pool, explain)
    best = best_positions(weighted, min(SHORTLIST, weighted.shape[1]))
    rows = np.broadcast_to(np.arange(len(best))[:, None], best.shape)
    shown = np.isfinite(np.take_along_axis(weighted, best, axis=1))
    return rows[shown], best[shown]


def cross_fitted_scores(
    pool: Candidates,
    targets: Mapping[int, set[int]],
    explain: BlendConfig,
    threads: int | None = None,
    earlier: Sequence[WeekRows] = (),
) -> np.ndarray | None:
    """Scores of a week's candidates, each customer's by a rule fit on the other customers of
    the week (FOLDS folds by customer id) and on the `earlier` weeks, so the week's figures
    are measured on customers the rule never learned from. None when a fold is too small to
    fit."""
    fold = pool.customer_ids % FOLDS
    scores = np.full(pool.positions.shape, -np.inf)
    for held_out in range(FOLDS):
        others = WeekRows.of(pool.customers_where(fold != held_out), targets, explain, "")
        purpose = f"cross-fitting fold {held_out + 1} of {FOLDS}, to score the customers left out"
        rule = fit_rows([others, *earlier], explain, threads, purpose)
        if rule is None:
            return None
        rows = np.flatnonzero(fold == held_out)
        scores[rows] = rule.scores(pool.customers_where(fold == held_out))
    return scores


@dataclass(frozen=True)
class CrossFitted:
    """`cross_fitted_scores` of one pool as a rule, to rank that same pool."""

    fitted: np.ndarray
    explain: BlendConfig

    @property
    def allow_repeats(self) -> bool:
        return self.explain.allow_repeats

    def scores(self, pool: Candidates) -> np.ndarray:
        if pool.positions.shape != self.fitted.shape:
            raise ValueError("cross-fitted scores rank only the pool they were fit on")
        return self.fitted

"""Temporal-holdout evaluation of the two-tower model, the blend and every baseline.

For each cutoff T: train on purchases before T, recommend from the whole catalogue, and score
against the products each customer bought in the 7 days from T. `blend`, what ships, ranks task
A by the rule learned on the four weeks before T and task B by the shipped weights; the weights
of `tuned_blend`, a yardstick, are tuned on the two weeks before T. Those weeks are scored by
models trained before them, so the test week is never looked at.

    python -m contoso_recs.recommender.evaluate --lake ROOT --dataset completejourney \\
        --cutoffs 2017-12-04 2017-11-13 --out reports/
"""

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from contoso_recs.recommender import baselines, blend, learned
from contoso_recs.recommender.data import (
    LakeFrames,
    as_cutoff,
    before,
    catalogue,
    customer_segments,
    purchases,
    read_lake,
    temporal_split,
)
from contoso_recs.recommender.metrics import (
    INTERVAL_REFERENCE,
    evaluate_task,
    intervals,
    task_targets,
)
from contoso_recs.recommender.ranking import (
    ProductIndex,
    exclusion_matrix,
    owned_sets,
    top_k_lists,
)
from contoso_recs.recommender.report import write_report
from contoso_recs.recommender.train import (
    TrainedModel,
    cutoff_date,
    lake_versions,
    positive_int,
    train,
)
from contoso_recs.recommender.two_tower import TwoTowerConfig

log = logging.getLogger(__name__)

LIST_LENGTH = 10
TASKS = ("A", "B")
VALIDATION_WEEKS = 2
# ALS settings per task, chosen on the validation weeks from 2017-10-30 and 2017-11-06 of The
# Complete Journey (NDCG@5): BM25 weighting lifts task A (.150 against .126) but lowers task B
# (.017 against .020), so task B keeps the log weighting.
ALS_PARAMETERS = {"A": {"weighting": "bm25", "alpha": 1.0}, "B": {}}
# `blend`: what ships, as the weekly table, the model card and the promotion gate rank (task A:
# the learned rule fit on the weeks before the cutoff; task B: the shipped weights,
# blend.SHIPPED_BLENDS); `tuned_blend`: a yardstick that never ships, weights tuned on the
# weeks before the cutoff. Both on the same candidates.
METHODS = (
    "popularity",
    "buy_again",
    "item_knn",
    "als",
    "two_tower",
    "popularity_mailer",
    "blend_without_mailer",
    "tuned_blend",
    "blend",
)


@dataclass(frozen=True)
class Holdout:
    """Test customers of one cutoff, what they bought before it and in the week after it."""

    cutoff: datetime
    customer_ids: np.ndarray
    index: ProductIndex
    bought_before: dict[int, set[int]]
    bought_in_test: dict[int, set[int]]
    owned: sp.csr_matrix
    segments: dict[int, str]
    categories: np.ndarray
    _als: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def targets(self, task: str) -> dict[int, set[int]]:
        return task_targets(self.bought_in_test, self.bought_before, task)

    def als(self, bought: pl.DataFrame, **parameters) -> baselines.AlsFactors:
        """ALS factors of the test customers (`baselines.fit_als` on `bought`, which must be
        the purchases this holdout was made from: the fit is kept per parameters only), fit
        once per parameters: the blend's candidates (`fit_als`'s defaults) and the task-B
        baseline (ALS_PARAMETERS["B"], the same) share it, a fit of minutes at millions of
        customers."""
        key = tuple(sorted(parameters.items()))
        if key not in self._als:
            self._als[key] = baselines.fit_als(
                bought, self.cutoff, self.customer_ids, self.index, **parameters
            )
        return self._als[key]


def holdout(frames: LakeFrames, bought: pl.DataFrame, cutoff: datetime) -> Holdout:
    """The holdout at a cutoff; test customers are those with a purchase in the week from it."""
    split = temporal_split(bought, cutoff)
    products = catalogue(frames, cutoff).unique("product_id").sort("product_id")
    index = ProductIndex.of(products["product_id"].to_numpy())
    bought_before = owned_sets(split.train)
    bought_in_test = owned_sets(split.test)
    customer_ids = np.asarray(sorted(bought_in_test), dtype=np.int64)
    segments = customer_segments(bought, customer_ids.tolist(), cutoff)
    return Holdout(
        cutoff=cutoff,
        customer_ids=customer_ids,
        index=index,
        bought_before=bought_before,
        bought_in_test=bought_in_test,
        owned=exclusion_matrix(bought_before, customer_ids, index),
        segments=dict(zip(segments["customer_id"], segments["segment"], strict=True)),
        categories=category_codes(products),
    )


def category_codes(products: pl.DataFrame) -> np.ndarray:
    """A code per product (1.. per distinct category, 0 where it has none), in product order."""
    codes = products["category"].rank("dense").fill_null(0)
    return codes.cast(pl.Int64).to_numpy()


def baseline_lists(bought: pl.DataFrame, test: Holdout, task: str) -> dict[str, dict]:
    """Top-10 lists of every baseline for one task."""
    exclude = test.owned if task == "B" else None
    args = (bought, test.cutoff, test.customer_ids, test.index, LIST_LENGTH)
    lists = {
        "popularity": baselines.popularity(*args, exclude),
        "item_knn": baselines.item_knn(*args, exclude),
        "als": baselines.als(*args, exclude, factors=test.als(bought, **ALS_PARAMETERS[task])),
    }
    if task == "A":
        lists["buy_again"] = baselines.buy_again(*args)
    return lists


def model_pool(
    trained: TrainedModel, frames: LakeFrames, bought: pl.DataFrame, test: Holdout
) -> tuple[np.ndarray, blend.Candidates]:
    """Two-tower scores over the catalogue and the blend's candidates for the test customers."""
    profiles = before(frames.customers, test.cutoff, "created_at")
    scores = blend.two_tower_scores(
        trained,
        before(bought, test.cutoff),
        profiles,
        test.customer_ids,
        test.cutoff,
        test.index,
        before(frames.product_views, test.cutoff, "viewed_at"),
    )
    pool = blend.candidates(
        scores,
        bought,
        test.cutoff,
        test.customer_ids,
        test.index,
        test.categories,
        als=test.als(bought),
        promotions=frames.promotions,
    )
    return scores, pool


def blend_rules(
    frames: LakeFrames, bought: pl.DataFrame, cutoff: datetime, config: TwoTowerConfig
) -> dict[str, dict[str, blend.Rule]]:
    """The rules of `tuned_blend` and `blend` per task: `tuned_blend` the weights tuned on the
    VALIDATION_WEEKS weeks before the cutoff, `blend` what the weekly table does (task A: the
    learned rule fit on the learned.RULE_WEEKS weeks before the cutoff; task B: the shipped
    weights).

    Every VALIDATION_WEEKS weeks are scored by a model trained before the first of them
    (customers as of each week's start), so no week a rule is fit on was seen in training, as
    a weekly retrain's rule learns from earlier weeks each scored by a model that never saw it
    (there, each week's own candidate).
    """
    weeks = []
    for block in range(learned.RULE_WEEKS // VALIDATION_WEEKS, 0, -1):
        first = cutoff - timedelta(days=7 * VALIDATION_WEEKS * block)
        trained = train(frames, first, config)
        for week in range(VALIDATION_WEEKS):
            validation = holdout(frames, bought, first + timedelta(days=7 * week))
            weeks.append((validation, model_pool(trained, frames, bought, validation)[1]))
    latest = weeks[-VALIDATION_WEEKS:]
    tuned = {
        task: blend.tune_weeks(
            [(pool, validation.targets(task)) for validation, pool in latest],
            allow_repeats=task == "A",
        )[0]
        for task in TASKS
    }
    rule = learned.fit(
        [(pool, validation.targets("A")) for validation, pool in weeks],
        blend.SHIPPED_BLENDS["A"],
    )
    return {"tuned_blend": tuned, "blend": shipped_rules(rule), **mailer_references()}


def mailer_references() -> dict[str, dict[str, blend.Rule]]:
    """Task B's yardsticks for the week's mailer, on the blend's candidates: what ships without
    the mailer term (`blend_without_mailer`), and popularity with the mailer term alone, at the
    shipped weights and category limit (`popularity_mailer`): how much of the blend's task-B
    figure the mailer brings, and how much the customer's own signals add to it."""
    shipped = blend.SHIPPED_BLENDS["B"]
    return {
        "blend_without_mailer": {"B": replace(shipped, mailer_weight=0.0)},
        "popularity_mailer": {
            "B": blend.BlendConfig(
                allow_repeats=False,
                repeat_weight=0.0,
                model_weight=0.0,
                popularity_weight=shipped.popularity_weight,
                mailer_weight=shipped.mailer_weight,
                max_per_category=shipped.max_per_category,
            )
        },
    }


def shipped_rules(rule: blend.Rule | None) -> dict[str, blend.Rule]:
    """What ranks each task in the weekly table: task A the learned rule when there is one,
    the shipped weights otherwise."""
    return {"A": rule or blend.SHIPPED_BLENDS["A"], "B": blend.SHIPPED_BLENDS["B"]}


def evaluate_cutoff(
    frames: LakeFrames, bought: pl.DataFrame, cutoff: datetime, config: TwoTowerConfig
) -> dict:
    """Metrics of every method and task at one cutoff, overall and per segment."""
    started = time.perf_counter()
    rules = blend_rules(frames, bought, cutoff, config)
    trained = train(frames, cutoff, config)
    result = evaluate_trained(frames, bought, trained, cutoff, rules)
    result["training"] = trained.metrics
    result["seconds"] = round(time.perf_counter() - started, 1)
    log.info("cutoff %s evaluated in %.0f s", f"{cutoff:%Y-%m-%d}", result["seconds"])
    return result


def evaluate_trained(
    frames: LakeFrames,
    bought: pl.DataFrame,
    trained: TrainedModel,
    cutoff: datetime,
    rules: dict[str, dict[str, blend.Rule]],
) -> dict:
    """Metrics of a trained model, its blend rules ({method: {task: rule}}) and every
    baseline on the week from `cutoff`."""
    test = holdout(frames, bought, cutoff)
    scores, pool = model_pool(trained, frames, bought, test)
    return evaluate_pool(bought, test, scores, pool, rules)


def evaluate_pool(
    bought: pl.DataFrame,
    test: Holdout,
    scores: np.ndarray,
    pool: blend.Candidates,
    rules: dict[str, dict[str, blend.Rule]],
) -> dict:
    """Metrics of the two-tower scores, the blend rules on its candidates and every baseline."""
    result: dict = {"segments": {}, "intervals": {}}
    for task in TASKS:
        lists = baseline_lists(bought, test, task)
        lists["two_tower"] = top_k_lists(
            lambda rows: scores[rows],
            test.customer_ids,
            test.index,
            LIST_LENGTH,
            test.owned if task == "B" else None,
        )
        for method, by_task in rules.items():
            if task in by_task:
                lists[method] = blend.recommend(pool, by_task[task], LIST_LENGTH)
        result[task], result["segments"][task] = {}, {}
        for method in METHODS:
            if method not in lists:
                continue
            overall, by_segment = evaluate_task(
                lists[method],
                test.targets(task),
                test.bought_before,
                test.segments,
                len(test.index),
            )
            result[task][method] = overall
            result["segments"][task][method] = by_segment
        result["intervals"][task] = intervals(
            {m: lists[m] for m in METHODS if m in lists},
            test.targets(task),
            INTERVAL_REFERENCE[task],
        )
    result["blend_config"] = {
        method: {task: describe(rule) for task, rule in by_task.items()}
        for method, by_task in rules.items()
    }
    result["test_customers"] = len(test.customer_ids)
    return result


def describe(rule: blend.Rule) -> dict:
    """A rule as JSON: its weights, or what the learned rule was fit on."""
    if isinstance(rule, learned.LearnedRule):
        return {"learned": True, "customers": rule.customers, "allow_repeats": rule.allow_repeats}
    if isinstance(rule, learned.CrossFitted):
        return {
            "learned": True,
            "cross_fitted_folds": learned.FOLDS,
            "allow_repeats": rule.allow_repeats,
        }
    return rule.to_json()


@dataclass(frozen=True)
class LakeWeek:
    """The lake, purchases and holdout of the week from a cutoff, read from pinned versions
    once for every model judged on that week (their ALS fit, kept on the holdout, too)."""

    frames: LakeFrames
    bought: pl.DataFrame
    test: Holdout


def lake_week(
    lake_root: str, cutoff: str | date | datetime, versions: dict[str, int] | None
) -> LakeWeek:
    frames = read_lake(lake_root, versions)
    bought = purchases(frames)
    return LakeWeek(frames, bought, holdout(frames, bought, as_cutoff(cutoff)))


def saved_model_pool(week: LakeWeek, bundle_dir: str | Path) -> tuple[np.ndarray, blend.Candidates]:
    """A saved model's two-tower scores and candidates for the week's customers."""
    return model_pool(TrainedModel.load(bundle_dir), week.frames, week.bought, week.test)


def evaluate_bundle(
    lake_root: str,
    bundle_dir: str | Path,
    cutoff: str | date | datetime,
    versions: dict[str, int] | None = None,
    earlier: Sequence[str | Path] = (),
    week: LakeWeek | None = None,
) -> dict:
    """Evaluate a saved model bundle on the week from `cutoff`, reading pinned lake versions,
    and fit its learned blend rule (saved in `bundle_dir`, last) on that week and on up to
    learned.RULE_WEEKS - 1 earlier weeks kept beside the `earlier` bundles (other versions of
    the model store: `learned.earlier_weeks`). The week's own rows are kept beside this bundle
    for later retrains.

    The week is one the model never saw, so the rule learns how its signals predict unseen
    purchases. The `blend` figures of task A are cross-fitted (`shipped_on_week`): each
    customer ranked by a rule fit on the week's other customers and the earlier weeks, never
    on their own purchases. When even that is too little to fit a rule, no rule is saved (an
    earlier one is removed), and the figures are the weights'.

    `week`: the week already read (`lake_week`, for the same lake root, cutoff and versions),
    so that models judged on one week share its reading and ALS fit.
    """
    week = week or lake_week(lake_root, cutoff, versions)
    bought, test = week.bought, week.test
    scores, pool = saved_model_pool(week, bundle_dir)
    explain = blend.SHIPPED_BLENDS["A"]
    rows = learned.WeekRows.of(pool, test.targets("A"), explain, f"{test.cutoff:%Y-%m-%d}")
    before = learned.earlier_weeks(earlier, rows.week)
    shipped = shipped_on_week(pool, test, before)
    result = evaluate_pool(bought, test, scores, pool, {"blend": shipped})
    rows.save(bundle_dir)
    weeks = [rows, *before]
    rule = None
    if isinstance(shipped["A"], learned.CrossFitted):
        rule = learned.fit_rows(weeks, explain)
    if rule is None:
        (Path(bundle_dir) / learned.FILE).unlink(missing_ok=True)
    else:
        rule.save(bundle_dir)
    result["learned_rule_customers"] = rule.customers if rule else 0
    result["learned_rule_weeks"] = sorted(w.week for w in weeks) if rule else []
    return result


def shipped_on_week(
    pool: blend.Candidates, test: Holdout, earlier: Sequence[learned.WeekRows] = ()
) -> dict[str, blend.Rule]:
    """The shipped rules as a model is judged on a week: task A by rules cross-fitted on the
    week's customers and the `earlier` weeks (the weights when that is too little to fit a
    rule), task B by its weights."""
    explain = blend.SHIPPED_BLENDS["A"]
    folds = learned.cross_fitted_scores(pool, test.targets("A"), explain, earlier=earlier)
    return shipped_rules(None if folds is None else learned.CrossFitted(folds, explain))


def evaluate_blends(
    lake_root: str,
    bundle_dir: str | Path,
    cutoff: str | date | datetime,
    versions: dict[str, int] | None = None,
    earlier: Sequence[str | Path] = (),
    week: LakeWeek | None = None,
) -> dict[str, dict[str, float]]:
    """The shipped rules' overall metrics per task for a saved model on the week from `cutoff`,
    judged as a candidate is (`shipped_on_week`, with the earlier weeks kept beside the
    `earlier` bundles, as `evaluate_bundle` is given them): how an already promoted model does
    on a candidate's holdout, for a like-for-like gate. Its saved rule is not used: it may have
    been fit on this very week. `week`: as for `evaluate_bundle`."""
    week = week or lake_week(lake_root, cutoff, versions)
    test = week.test
    _, pool = saved_model_pool(week, bundle_dir)
    before = learned.earlier_weeks(earlier, f"{test.cutoff:%Y-%m-%d}")
    rules = shipped_on_week(pool, test, before)
    return {
        task: evaluate_task(
            blend.recommend(pool, rules[task], LIST_LENGTH),
            test.targets(task),
            test.bought_before,
            test.segments,
            len(test.index),
        )[0]
        for task in TASKS
    }


def evaluate(
    frames: LakeFrames, cutoffs: list[datetime], config: TwoTowerConfig | None = None
) -> dict[str, dict]:
    """{cutoff: {task: {method: {metric: value}}, ...}} for every cutoff."""
    config = config or TwoTowerConfig()
    bought = purchases(frames)
    return {f"{c:%Y-%m-%d}": evaluate_cutoff(frames, bought, c, config) for c in cutoffs}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True, help="lake root holding the Delta tables")
    parser.add_argument("--dataset", required=True, help="name of the dataset in the report")
    parser.add_argument(
        "--cutoffs", nargs="+", required=True, type=cutoff_date, help="cutoffs, YYYY-MM-DD"
    )
    parser.add_argument("--out", required=True, help="folder for evaluation.json/.md/.png")
    parser.add_argument("--epochs", type=positive_int, default=TwoTowerConfig.epochs)
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="CPU threads for PyTorch (default: all)"
    )
    parser.add_argument(
        "--versions",
        type=lake_versions,
        default=None,
        help='pinned Delta versions as JSON, e.g. {"orders": 3}',
    )
    args = parser.parse_args(argv)
    try:  # before hours of training, not after
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--out {args.out}: {error.strerror or error}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    frames = read_lake(args.lake, args.versions)
    cutoffs = [as_cutoff(c) for c in args.cutoffs]
    bought_at = purchases(frames)["at"]
    for cutoff in cutoffs:  # a week with no purchase has nothing to test on
        if not bought_at.is_between(cutoff, cutoff + timedelta(days=7), closed="left").any():
            raise SystemExit(
                f"no purchases by known customers in the week from {cutoff:%Y-%m-%d}: "
                "nothing to evaluate on (the lake's orders end before it, or start after it)"
            )
    config = replace(TwoTowerConfig(), epochs=args.epochs)
    results = {args.dataset: evaluate(frames, cutoffs, config)}
    paths = write_report(results, Path(args.out))
    sys.stdout.write("".join(f"{p}\n" for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

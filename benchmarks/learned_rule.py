"""What the learned blend rule costs the weekly table: customers per second, rule against weights.

`python -m benchmarks.learned_rule` trains a two-tower model on the demo-scale synthetic lake
(orders before the last full week), fits the learned rule of task A on that week
(`learned.fit`, as the evaluation asset does) and then scores the following week's table for
every customer twice with each rule, alternating, with `WeeklyScorer` (what the weekly_top5 asset
runs): ranked by the shipped weights (the reference) and by the learned rule. The figures are the
customers per second of each, their ratio, the seconds the fit took, and the extra seconds per
million customers the rule adds. Recorded with `benchmarks.report.record("learned_rule", ...)`.

The demo lake is read from `--lake` (default `data/lake`, what `make demo` builds); when there is
none, the demo world is generated and loaded into a scratch folder first (not timed).
"""

import argparse
import json
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch

from benchmarks.lakes import synthetic_lake
from benchmarks.report import record
from benchmarks.weekly_rules import REPEATS, compare

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LAKE = REPO_ROOT / "data" / "lake"


def run(lake: Path, epochs: int) -> dict:
    from contoso_recs.recommender import evaluate, learned
    from contoso_recs.recommender.blend import SHIPPED_BLENDS
    from contoso_recs.recommender.data import as_cutoff, purchases, read_lake
    from contoso_recs.recommender.train import train
    from contoso_recs.recommender.two_tower import TwoTowerConfig

    frames = read_lake(str(lake))
    bought = purchases(frames)
    latest = bought["at"].max()
    week = as_cutoff(latest.date()) - timedelta(days=latest.weekday())  # the last Monday
    holdout_start = week - timedelta(days=7)
    trained = train(frames, holdout_start, replace(TwoTowerConfig(), epochs=epochs))
    week_of = evaluate.holdout(frames, bought, holdout_start)
    _, pool = evaluate.model_pool(trained, frames, bought, week_of)
    started = time.perf_counter()
    rule = learned.fit([(pool, week_of.targets("A"))], SHIPPED_BLENDS["A"])
    fit_seconds = time.perf_counter() - started
    if rule is None:
        raise SystemExit("the demo week is too small to fit a rule")

    rules = {"weights": SHIPPED_BLENDS["A"], "learned_rule": rule}
    measured = compare(frames, trained, week, rules)
    customers = measured["customers"]
    weights, learned_speed = (measured["customers_per_second"][name] for name in rules)
    return {
        "description": (
            "Weekly table scoring (`WeeklyScorer.score`, chunks of 2,000 customers, 1 PyTorch "
            "thread) on the demo lake, ranked by the task-A learned rule against the shipped "
            f"weights in the same run, each {REPEATS} times alternating; the rule fit on the "
            "week before (`learned.fit`)."
        ),
        "customers": customers,
        "fit_customers": rule.customers,
        "fit_seconds": round(fit_seconds, 1),
        "weights_customers_per_second": round(weights),
        "learned_rule_customers_per_second": round(learned_speed),
        "ratio_learned_to_weights": round(learned_speed / weights, 3),
        "extra_seconds_per_million_customers": round(1e6 / learned_speed - 1e6 / weights),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=DEFAULT_LAKE)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-record", action="store_true", help="print the figures only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="learned_rule_bench_") as scratch:
        lake = args.lake
        if not (lake / "orders").exists():
            lake = synthetic_lake(Path(scratch), "demo")
        figures = run(lake, args.epochs)
    print(json.dumps(figures, indent=2))
    if not args.no_record:
        record("learned_rule", figures)


if __name__ == "__main__":
    main()

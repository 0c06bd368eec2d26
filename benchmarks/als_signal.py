"""What the ALS preference signal costs the task-B weekly table, at demo and at full scale.

`python -m benchmarks.als_signal` measures two things:

- On the demo-scale synthetic lake: a two-tower model is trained on the orders before the last
  full week, then the following week's task-B table is prepared and scored for every customer
  with `WeeklyScorer` (what the weekly_top5 asset runs), alternating, `REPEATS` times each: with
  the shipped task-B weights (ALS preference included, so its factors are fit in `prepare`) and
  with the same weights without the ALS term (the reference: no factors fit). Figures: the
  customers scored per second by each (`score`, after `prepare`), their ratio, the extra
  scoring seconds per million customers, and the seconds `prepare` took with and without.
- At full scale: `baselines.fit_als` (the fit the weekly table runs once) on orders of
  2,000,000 customers over 50,000 products with 10 distinct products per customer on average
  (about 20 M customer-product pairs, the order lines of the full-scale world), drawn with a
  fixed seed: seconds of the fit, and the peak memory of its own process (the drawn orders
  included).

Recorded with `benchmarks.report.record("als_signal", ...)`. The demo lake is read from
`--lake` (default `data/lake`, what `make demo` builds); when there is none, the demo world is
generated and loaded into a scratch folder first (not timed).
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import torch

from benchmarks.lakes import synthetic_lake
from benchmarks.report import record
from benchmarks.weekly_rules import REPEATS, compare

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LAKE = REPO_ROOT / "data" / "lake"
FULL_CUSTOMERS = 2_000_000
FULL_PRODUCTS = 50_000
PRODUCTS_PER_CUSTOMER = 10


def demo_scale(lake: Path, epochs: int) -> dict:
    from contoso_recs.recommender.blend import SHIPPED_BLENDS
    from contoso_recs.recommender.data import as_cutoff, purchases, read_lake
    from contoso_recs.recommender.train import train
    from contoso_recs.recommender.two_tower import TwoTowerConfig

    frames = read_lake(str(lake))
    latest = purchases(frames)["at"].max()
    week = as_cutoff(latest.date()) - timedelta(days=latest.weekday())  # the last Monday
    trained = train(frames, week - timedelta(days=7), replace(TwoTowerConfig(), epochs=epochs))
    rules = {
        "without_als": replace(SHIPPED_BLENDS["B"], als_weight=0.0),
        "with_als": SHIPPED_BLENDS["B"],
    }
    measured = compare(frames, trained, week, rules)
    customers = measured["customers"]
    without, with_als = (measured["customers_per_second"][name] for name in rules)
    prepare = measured["prepare_seconds"]
    return {
        "customers": customers,
        "without_als_customers_per_second": round(without),
        "with_als_customers_per_second": round(with_als),
        "ratio_with_to_without": round(with_als / without, 3),
        "extra_scoring_seconds_per_million_customers": round(1e6 / with_als - 1e6 / without),
        "without_als_prepare_seconds": round(prepare["without_als"], 1),
        "with_als_prepare_seconds": round(prepare["with_als"], 1),
    }


def full_scale_fit() -> dict:
    """Fit ALS on a drawn full-scale order history; runs in its own process (peak memory)."""
    import polars as pl

    from contoso_recs.recommender.baselines import fit_als
    from contoso_recs.recommender.ranking import ProductIndex

    rng = np.random.default_rng(7)
    pairs = FULL_CUSTOMERS * PRODUCTS_PER_CUSTOMER
    # products drawn with a long tail, as shoppers' baskets are
    weights = 1.0 / np.arange(1, FULL_PRODUCTS + 1) ** 0.8
    cutoff = datetime(2026, 11, 30, tzinfo=UTC)
    bought = pl.DataFrame(
        {
            "customer_id": np.repeat(
                np.arange(FULL_CUSTOMERS, dtype=np.int64), PRODUCTS_PER_CUSTOMER
            ),
            "order_id": rng.integers(0, pairs // 4, pairs, dtype=np.int64),
            "product_id": rng.choice(FULL_PRODUCTS, pairs, p=weights / weights.sum()),
        }
    ).with_columns(pl.lit(cutoff - timedelta(days=3)).dt.cast_time_unit("us").alias("at"))
    index = ProductIndex.of(np.arange(FULL_PRODUCTS, dtype=np.int64))
    customers = np.arange(FULL_CUSTOMERS, dtype=np.int64)
    started = time.perf_counter()
    factors = fit_als(bought, cutoff, customers, index)
    seconds = time.perf_counter() - started
    return {
        "customers": FULL_CUSTOMERS,
        "products": FULL_PRODUCTS,
        "order_lines": pairs,
        "fit_seconds": round(seconds, 1),
        "factors": int(factors.customers.shape[1]),
        # of the whole process: the drawn order lines (a 20 M-row frame) included
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=DEFAULT_LAKE)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-record", action="store_true", help="print the figures only")
    parser.add_argument("--full-scale-fit-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.full_scale_fit_only:
        print(json.dumps(full_scale_fit()))
        return
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="als_signal_bench_") as scratch:
        lake = args.lake
        if not (lake / "orders").exists():
            lake = synthetic_lake(Path(scratch), "demo")
        demo = demo_scale(lake, args.epochs)
    fit = subprocess.run(
        [sys.executable, "-m", "benchmarks.als_signal", "--full-scale-fit-only"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    figures = {
        "description": (
            "Task-B weekly table (`WeeklyScorer.score`, chunks of 2,000 customers, 1 PyTorch "
            "thread, after `WeeklyScorer.prepare`, timed apart) on the demo lake with the "
            "shipped weights, ALS preference included, against the same weights without it, "
            f"{REPEATS} times each alternating; "
            "and the ALS fit (`baselines.fit_als`) on 2,000,000 customers x 50,000 products "
            "(20 M order lines, drawn) in its own process."
        ),
        **{f"demo_{key}": value for key, value in demo.items()},
        **{
            f"full_scale_{key}": value
            for key, value in json.loads(fit.stdout.strip().splitlines()[-1]).items()
        },
    }
    print(json.dumps(figures, indent=2))
    if not args.no_record:
        record("als_signal", figures)


if __name__ == "__main__":
    main()

"""The weekly top-5 table at full scale: every customer of the full-scale lake, end to end.

`python -m benchmarks.weekly_table` writes one week's table for all 2,000,000 customers of the
full-scale synthetic world with `weekly_recommendations`, the code the `lake/weekly_top5` asset
runs (candidate pools from repeat purchases, co-purchases, favourite categories, best sellers and
the two-tower top 100; blend; rules; reasons; product details), and writes it as a Delta table.

- The world: the full-scale sources under `--data-dir` (what `make bench` generates in
  `data/bench`) loaded into its lake by the product itself (`contoso-recs demo --scale full
  --skip-training`) when there is no lake there yet; not timed.
- The model: trained in its own process on the orders of a random sample of customers (1 epoch,
  not timed), so the table has a real model to score every customer with; the customer tower
  encodes all 2,000,000 from their own history and profile.
- The table: in a fresh process (its peak memory is its own: the lake frames read, the signals
  and one chunk of customers at a time) — `prepare_seconds` (signals for every customer),
  `score_seconds` (every chunk, product details joined), `write_seconds` (the Delta write),
  peak RSS.

The reference for the scoring kernel (exact faiss `IndexFlatIP`) is measured beside it in the
`batch_scoring` benchmark; this one states what the whole table costs at the same scale and
that its memory stays bounded. Figures go to `benchmarks.report.record("weekly_table", ...)`.
"""

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.lakes import synthetic_lake
from benchmarks.report import record

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / "data" / "bench"
TRAINING_CUSTOMERS = 100_000
EPOCHS = 1


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def week_after_latest_order(frames) -> "object":
    from contoso_recs.automation.weekly import week_of

    latest = frames.orders["ordered_at"].max()
    return week_of(latest + timedelta(days=1))


def train_sample(lake: Path, model_dir: Path, customers: int, epochs: int) -> dict:
    """In a fresh process: train on a sample of customers' orders before the week."""
    from contoso_recs.recommender.data import as_cutoff, read_lake
    from contoso_recs.recommender.train import train
    from contoso_recs.recommender.two_tower import TwoTowerConfig

    frames = read_lake(str(lake))
    week = week_after_latest_order(frames)
    rng = np.random.default_rng(0)
    ids = frames.orders["customer_id"].drop_nulls().unique().to_numpy()
    sample = pl.Series(rng.choice(ids, size=min(customers, len(ids)), replace=False))
    orders = frames.orders.filter(pl.col("customer_id").is_in(sample.implode()))
    lines = frames.order_lines.join(orders.select("order_id"), on="order_id", how="semi")
    started = time.perf_counter()
    trained = train(
        replace(frames, orders=orders, order_lines=lines),
        as_cutoff(week),
        replace(TwoTowerConfig(), epochs=epochs),
    )
    trained.save(model_dir)
    return {
        "week": week.isoformat(),
        "training_customers": len(sample),
        "training_examples": trained.metrics["examples"],
        "training_seconds": time.perf_counter() - started,
    }


def score_week(lake: Path, model_dir: Path, out: Path) -> dict:
    """In a fresh process: the week's table for every eligible customer, written as Delta."""
    import torch

    from contoso_recs.recommender.blend import SHIPPED_BLENDS
    from contoso_recs.recommender.data import read_lake
    from contoso_recs.recommender.train import TrainedModel
    from contoso_recs.recommender.weekly import (
        CHUNK_CUSTOMERS,
        K,
        WeeklyScorer,
        weekly_table,
    )

    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    frames = read_lake(str(lake))
    read_seconds = time.perf_counter() - started
    trained = TrainedModel.load(model_dir, device="cpu")
    week = week_after_latest_order(frames)
    config = SHIPPED_BLENDS["A"]

    started = time.perf_counter()
    scorer = WeeklyScorer.prepare(frames, trained, week, config, K)
    prepare_seconds = time.perf_counter() - started
    customers = len(scorer.customer_ids)
    started = time.perf_counter()
    table = weekly_table(scorer, frames, "benchmark", CHUNK_CUSTOMERS)
    score_seconds = time.perf_counter() - started
    started = time.perf_counter()
    table.write_delta(str(out), mode="overwrite")
    write_seconds = time.perf_counter() - started
    per_customer = table.group_by("customer_id").agg(
        pl.len().alias("rows"), pl.col("product_id").n_unique().alias("distinct")
    )
    return {
        "week": week.isoformat(),
        "customers": customers,
        "products_on_sale": len(scorer.index),
        "order_lines_in_lake": int(frames.order_lines.height),
        "rows": table.height,
        "customers_with_5_distinct": int(
            per_customer.filter((pl.col("rows") == K) & (pl.col("distinct") == K)).height
        ),
        "distinct_products": int(table["product_id"].n_unique()),
        "reasons": dict(table.group_by("reason").len().sort("reason").iter_rows()),
        "read_lake_seconds": read_seconds,
        "prepare_seconds": prepare_seconds,
        "score_seconds": score_seconds,
        "table_seconds": prepare_seconds + score_seconds,
        "customers_per_second": customers / max(score_seconds, 1e-9),
        "write_seconds": write_seconds,
        "chunk_customers": CHUNK_CUSTOMERS,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }


def in_subprocess(step: str, *arguments: str) -> dict:
    print(f"{step} ...", file=sys.stderr, flush=True)
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.weekly_table", "--step", step, *arguments],
        cwd=REPO_ROOT,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--training-customers", type=int, default=TRAINING_CUSTOMERS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--no-record", action="store_true", help="print the figures only")
    parser.add_argument("--step", choices=["train", "score"], help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:  # progress of the measured step on stderr
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.step == "train":
        lake, model_dir = args.paths
        figures = train_sample(lake, model_dir, args.training_customers, args.epochs)
        print(json.dumps({**figures, "peak_rss_mib": peak_rss_mib()}))
        return
    if args.step == "score":
        lake, model_dir, out = args.paths
        figures = score_week(lake, model_dir, out)
        print(json.dumps({**figures, "peak_rss_mib": peak_rss_mib()}))
        return

    lake = synthetic_lake(args.data_dir, "full")
    with tempfile.TemporaryDirectory(prefix="weekly_table_bench_") as scratch:
        model_dir, out = Path(scratch) / "model", Path(scratch) / "weekly_top5"
        training = in_subprocess(
            "train",
            str(lake),
            str(model_dir),
            "--training-customers",
            str(args.training_customers),
            "--epochs",
            str(args.epochs),
        )
        scoring = in_subprocess("score", str(lake), str(model_dir), str(out))
    figures = {
        "description": "One week's top-5 table for every customer of the full-scale synthetic "
        "lake (`contoso_recs.recommender.weekly.weekly_recommendations`, what the "
        "`lake/weekly_top5` asset runs, blend A), written as a Delta table, in its own "
        "process; the model is trained beforehand on a sample of customers' orders (not "
        "timed) and scores every customer from their own history and profile. "
        "`prepare_seconds`: the signals of every customer; `score_seconds`: every chunk of "
        "customers (candidates, model top 100, blend, rules, reasons); `peak_rss_mib`: the "
        "scoring process, lake frames included. The scoring kernel's comparison with exact "
        "faiss search is the `batch_scoring` benchmark.",
        **scoring,
        **{f"model_{k}": v for k, v in training.items() if k != "week"},
    }
    print(json.dumps(figures, indent=2))
    if not args.no_record:
        record("weekly_table", figures)


if __name__ == "__main__":
    main()

"""Two-tower training speed on this CPU: examples per second and peak memory.

`python -m benchmarks.training` trains the model (`contoso_recs.recommender.train.train`, the
settings the Dagster demo uses: 2 epochs) on the demo-scale synthetic lake, twice, each in its own
process so that its peak memory is its own, with 1 and with 2 PyTorch threads:

- `demo`: the demo lake as it is (20,000 customers);
- `2m_customers`: the same orders with a customer table of 2,000,000 rows. The full-scale
  generator's lake is not used; the extra 1,980,000 customer profiles are built here, drawn
  from the demo customers' own age bands, income bands and household sizes, and they have no
  orders (as most of a retailer's CRM does in any one half-year).

The demo lake is read from `--lake` (default `data/lake`, what `make demo` builds); when there is
none, the demo world is generated and loaded into a scratch folder first (`contoso-recs demo
--scale demo --skip-training`), which takes a few minutes and is not timed. Examples per second
is the training loop's own figure (examples of an epoch over the epoch's wall time), so it leaves
out building the examples, which `seconds` (the whole `train` call) includes. Figures are printed
as JSON and recorded with `benchmarks.report.record("training", ...)`.
"""

import argparse
import json
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
DEFAULT_LAKE = REPO_ROOT / "data" / "lake"
CUSTOMERS = 2_000_000
EPOCHS = 2
HOLDOUT_DAYS = 7
TARGET_EXAMPLES_PER_SECOND = 40_000


def run(lake: Path | None, customers: int, epochs: int, threads: list[int]) -> dict:
    """Measure both variants at each thread count, preparing the demo lake when there is none."""
    with tempfile.TemporaryDirectory(prefix="training_bench_") as scratch:
        if lake is None or not (lake / "orders").exists():
            lake = synthetic_lake(Path(scratch), "demo")
        measured = {
            f"{variant}_{n}_thread{'s' if n > 1 else ''}": measure_in_subprocess(
                variant, lake, customers, epochs, n
            )
            for n in threads
            for variant in ("demo", "2m_customers")
        }
    figures = {
        "description": "Two-tower training (`contoso_recs.recommender.train.train`, "
        f"{epochs} epochs as in the Dagster demo) on the demo-scale synthetic lake, with its own "
        f"customer table (`demo_*`) and with a {customers:,}-row customer table "
        "(`2m_customers_*`: profiles built in the benchmark from the demo customers' bands, "
        "without orders; the full-scale generator's output is not used), each in its own "
        f"process on the CPU with {' and '.join(map(str, threads))} PyTorch thread(s). "
        "Examples per second: the "
        "training loop's examples per epoch over the epoch's wall time, mean of the epochs; "
        "`seconds` is the whole `train` call, building the examples included. The machine is "
        "shared: `load_average` is the 1-minute load as each run finished, and on a busy "
        "2-core machine 2 threads can be several times slower than 1.",
        "epochs": epochs,
        "target_examples_per_second": TARGET_EXAMPLES_PER_SECOND,
        "torch_version": next(iter(measured.values()))["torch_version"],
    }
    for name, run_figures in measured.items():
        for key in (
            "customers",
            "examples",
            "examples_per_second",
            "epoch_examples_per_second",
            "seconds",
            "peak_rss_mib",
            "load_average",
        ):
            figures[f"{name}_{key}"] = run_figures[key]
    return figures


def measure_in_subprocess(
    variant: str, lake: Path, customers: int, epochs: int, threads: int
) -> dict:
    print(f"training on {variant}, {threads} thread(s) ...", file=sys.stderr, flush=True)
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.training", "--measure", variant, str(lake)),
            *("--customers", str(customers), "--epochs", str(epochs), "--threads", str(threads)),
        ],
        cwd=REPO_ROOT,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    print(f"{variant}: {figures['examples_per_second']:,.0f} examples/s", file=sys.stderr)
    return figures


def measure(variant: str, lake: Path, customers: int, epochs: int, threads: int) -> dict:
    """In a fresh process: read the lake, train once, report speed and memory."""
    import torch

    from contoso_recs.recommender.data import as_cutoff, read_lake
    from contoso_recs.recommender.train import train
    from contoso_recs.recommender.two_tower import TwoTowerConfig

    torch.set_num_threads(threads)
    frames = read_lake(str(lake))
    if variant == "2m_customers":
        frames = replace(frames, customers=larger_customer_table(frames.customers, customers))
    # the model stage's default: the last week of orders is held out
    latest = frames.orders["ordered_at"].max()
    cutoff = as_cutoff(latest.date() + timedelta(days=1 - HOLDOUT_DAYS))
    started = time.perf_counter()
    trained = train(frames, cutoff, replace(TwoTowerConfig(), epochs=epochs))
    seconds = time.perf_counter() - started
    speeds = trained.metrics["examples_per_second"]
    return {
        "customers": frames.customers.height,
        "examples": trained.metrics["examples"],
        "examples_per_second": float(np.mean(speeds)),
        "epoch_examples_per_second": [round(s) for s in speeds],
        "seconds": seconds,
        "load_average": os.getloadavg()[0],
        "torch_version": torch.__version__,
    }


def larger_customer_table(customers: pl.DataFrame, rows: int, seed: int = 0) -> pl.DataFrame:
    """The customer table grown to `rows` rows with profiles drawn from its own values.

    New customers get ids above the largest existing one, and the created_at of a random
    existing customer, so the table keeps its schema and its mix of bands.
    """
    extra = rows - customers.height
    if extra <= 0:
        return customers
    rng = np.random.default_rng(seed)
    donors = customers[rng.integers(0, customers.height, extra)]
    first = int(customers["customer_id"].max()) + 1
    grown = donors.with_columns(
        pl.Series("customer_id", np.arange(first, first + extra), dtype=pl.Int64)
    )
    return pl.concat([customers, grown.select(customers.columns)])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=DEFAULT_LAKE)
    parser.add_argument("--customers", type=int, default=CUSTOMERS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    parser.add_argument("--no-record", action="store_true", help="print the figures only")
    parser.add_argument("--measure", nargs=2, metavar=("VARIANT", "LAKE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        variant, lake = args.measure
        figures = measure(variant, Path(lake), args.customers, args.epochs, args.threads[0])
        print(json.dumps({**figures, "peak_rss_mib": peak_rss_mib()}))
        return
    figures = run(args.lake, args.customers, args.epochs, args.threads)
    print(json.dumps(figures, indent=2))
    if not args.no_record:
        record("training", figures)


if __name__ == "__main__":
    main()

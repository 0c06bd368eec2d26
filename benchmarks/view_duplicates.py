"""What looking for re-sent product views costs an hourly load, at full scale.

`python -m benchmarks.view_duplicates` builds, in a scratch folder (not timed), a
`product_views` lake table of DAYS days at PER_HOUR views an hour (the full-scale world lands
about 2.4 million views a day, 100,000 an hour), then takes one more hour of PER_HOUR views, as
raw text rows, whose event ids include RESENT copies of earlier views, and measures,
alternating, REPEATS times each, every measurement in its own process:

- the reference: conforming that hour (type, validate, deduplicate within the hour: `conform`
  with the product views contract), what an hourly load did before the lookup;
- the lookup the load adds: `events_in_other_hours`, the hour's event ids against the hours
  around it in the lake.

Figures: median seconds of each, their ratio, each process's peak memory and its memory just
before the timed part, and the re-sent copies found. Recorded with
`benchmarks.report.record("view_duplicates", ...)`.
"""

import multiprocessing
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import psutil

from benchmarks.report import record
from contoso_recs.lake.conform import conform
from contoso_recs.resources.lake import Lake
from contoso_recs.sources.clickstream import (
    PARTITION_FORMAT,
    events_in_other_hours,
    product_views_contract,
)

DAYS = 8
PER_HOUR = 100_000
RESENT = 1_000
REPEATS = 3
PRODUCTS = 50_000
START = datetime(2026, 11, 20, tzinfo=UTC)
HOUR = START + timedelta(days=DAYS)


def event_ids(hour: datetime) -> pl.Series:
    numbers = pl.int_range(PER_HOUR, eager=True).cast(pl.String).str.zfill(8)
    return (f"{hour:%Y%m%d%H}-" + numbers).alias("event_id")


def build_lake(root: str) -> None:
    rng = np.random.default_rng(7)
    lake = Lake(root_uri=root)
    for day in range(DAYS):
        hours = [START + timedelta(days=day, hours=h) for h in range(24)]
        views = pl.concat(
            pl.DataFrame(
                {
                    "event_id": event_ids(hour),
                    "customer_id": rng.integers(1, 2_000_000, PER_HOUR),
                    "product_id": rng.integers(1, PRODUCTS, PER_HOUR),
                    "viewed_at": hour,
                    "landed_hour": hour.strftime(PARTITION_FORMAT),
                    "landed_date": hour.strftime("%Y-%m-%d"),
                }
            )
            for hour in hours
        )
        first, last = (hours[i].strftime(PARTITION_FORMAT) for i in (0, -1))
        lake.replace_where(
            "product_views",
            views,
            f"landed_hour >= '{first}' AND landed_hour <= '{last}'",
            ["landed_date"],
        )


def raw_hour() -> pl.DataFrame:
    """The new hour as raw text rows, RESENT of its event ids copies of earlier views."""
    ids = event_ids(HOUR)
    earlier = event_ids(HOUR - timedelta(days=3))[:RESENT]
    ids = pl.concat([earlier, ids[RESENT:]])
    rng = np.random.default_rng(11)
    return pl.DataFrame(
        {
            "event_id": ids,
            "event_type": "product_view",
            "customer_id": pl.Series(rng.integers(1, 2_000_000, PER_HOUR)).cast(pl.String),
            "session_id": "s",
            "product_id": pl.Series(rng.integers(1, PRODUCTS, PER_HOUR)).cast(pl.String),
            "viewed_at": f"{HOUR:%Y-%m-%dT%H}:10:00.000Z",
            "dwell_seconds": "12.5",
            "device": "ios",
            "_file": "part-0000.jsonl",
            "_line": pl.int_range(1, PER_HOUR + 1, eager=True),
        }
    )


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, a spawned process does
    not inherit the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(kind: str, root: str, queue) -> None:
    raw = raw_hour()
    products = pl.Series("product_id", range(1, PRODUCTS + 1))
    key = HOUR.strftime(PARTITION_FORMAT)
    before = psutil.Process().memory_info().rss / 2**20
    started = time.perf_counter()
    if kind == "conform":
        ref = pl.format("{}:{}", pl.col("_file"), pl.col("_line"))
        found = conform(raw, product_views_contract(HOUR, products), ref).loaded.height
    else:
        ids = raw["event_id"].str.strip_chars().drop_nulls().unique()
        found = events_in_other_hours(Lake(root_uri=root), ids, key, key).len()
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    queue.put((seconds, peak, found, before))


def run(kind: str, root: str) -> tuple[float, float, int, float]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(kind, root, queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"the {kind} measurement failed (exit code {process.exitcode})")
    return queue.get(timeout=60)


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        print(f"building {DAYS} days of {PER_HOUR:,} views an hour ...", flush=True)
        build_lake(scratch)
        runs: dict[str, list] = {"conform": [], "lookup": []}
        for _ in range(REPEATS):
            for kind in runs:
                runs[kind].append(run(kind, scratch))
                print(kind, runs[kind][-1], flush=True)
    conform_s = statistics.median(r[0] for r in runs["conform"])
    lookup_s = statistics.median(r[0] for r in runs["lookup"])
    record(
        "view_duplicates",
        {
            "description": "The lookup a product-views load makes, once per run of up to 24 hours "
            "(per 24 hours of a longer run), for views re-sent "
            f"in another hour: the hour's {PER_HOUR:,} event ids against {DAYS} days of "
            f"{PER_HOUR:,} views an hour in the lake (`events_in_other_hours`), beside the "
            "reference, conforming the same hour (`conform`, what the load did before); each "
            f"measured {REPEATS} times, alternating, in its own process (medians).",
            "views_in_lake": DAYS * 24 * PER_HOUR,
            "views_in_hour": PER_HOUR,
            "resent_in_hour": RESENT,
            "resent_found": runs["lookup"][0][2],
            "conform_seconds": round(conform_s, 3),
            "lookup_seconds": round(lookup_s, 3),
            "time_ratio_lookup_to_conform": round(lookup_s / conform_s, 3),
            # Peak memory of each measuring process, and its memory just before the timed part
            # (imports and the hour's raw rows): the difference is what the timed part added.
            "conform_peak_rss_mib": round(max(r[1] for r in runs["conform"])),
            "conform_rss_before_mib": round(max(r[3] for r in runs["conform"])),
            "lookup_peak_rss_mib": round(max(r[1] for r in runs["lookup"])),
            "lookup_rss_before_mib": round(max(r[3] for r in runs["lookup"])),
        },
    )


if __name__ == "__main__":
    main()

"""Measured steps, each run in its own process so its peak memory is its own.

`python -m benchmarks.steps STEP ARGS...` prints one JSON line: the step's figures, its wall time
(`seconds`, the measured part only) and its peak resident memory (`peak_rss_mib`).
"""

import json
import logging
import resource
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from contoso_recs.automation.jobs import clickstream_job
from contoso_recs.definitions import build_definitions
from contoso_recs.demo_data import layout, synthetic
from contoso_recs.environment import local_resources
from contoso_recs.lake import keys
from contoso_recs.resources.lake import Lake
from contoso_recs.resources.landing import clickstream_hour_prefix
from contoso_recs.sources.clickstream import PARTITION_FORMAT


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(data_dir: str, scale: str) -> dict:
    started = time.perf_counter()
    manifest = synthetic.generate(Path(data_dir), scale, seed=0)
    return {"seconds": time.perf_counter() - started, "counts": manifest["counts"]}


def day_files(data_dir: str, day: str) -> list[Path]:
    root = layout.clickstream_root(Path(data_dir))
    first = datetime.strptime(day, "%Y-%m-%d")
    hours = [first + timedelta(hours=h) for h in range(24)]
    return sorted(f for h in hours for f in (root / clickstream_hour_prefix(h)).glob("*.jsonl"))


def ingest_with_product(data_dir: str, day: str, lake_dir: str) -> dict:
    """The product: the `clickstream_hourly` job over the day's 24 hours, as one run."""
    lake = Lake(root_uri=lake_dir)
    lake.upsert("products", _catalogue(data_dir), ["product_id"])
    resources = {**local_resources(Path(data_dir)), "lake": lake}
    job = build_definitions(resources).resolve_job_def(clickstream_job.name)
    first = datetime.strptime(day, "%Y-%m-%d")
    tags = {
        ASSET_PARTITION_RANGE_START_TAG: first.strftime(PARTITION_FORMAT),
        ASSET_PARTITION_RANGE_END_TAG: (first + timedelta(hours=23)).strftime(PARTITION_FORMAT),
    }
    with dg.instance_for_test() as instance:
        started = time.perf_counter()
        result = job.execute_in_process(instance=instance, tags=tags)
        seconds = time.perf_counter() - started
    # one materialisation per hour, each with the run's figures (lake/quarantine's too)
    metadata = next(
        event.event_specific_data.materialization.metadata
        for event in result.get_asset_materialization_events()
        if event.event_specific_data.materialization.asset_key == keys.PRODUCT_VIEWS
    )
    return {
        "seconds": seconds,
        "rows_read": metadata["rows_read"].value,
        "rows_loaded": metadata["rows_loaded"].value,
        "rows_quarantined": metadata["rows_quarantined"].value,
    }


def _catalogue(data_dir: str) -> pl.DataFrame:
    import sqlite3

    with sqlite3.connect(layout.transactions_db_path(Path(data_dir))) as conn:
        ids = [row[0] for row in conn.execute("SELECT product_id FROM products")]
    return pl.DataFrame({"product_id": pl.Series(ids, dtype=pl.Int64)})


def ingest_with_plain_polars(data_dir: str, day: str, lake_dir: str) -> dict:
    """The reference: polars reads the same files and writes them as a Delta table, no checks.

    Plain polars cannot read a file holding a malformed line at all; such files are counted.
    """
    files = day_files(data_dir, day)
    started = time.perf_counter()
    frames, unreadable = [], 0
    for path in files:
        try:
            frames.append(pl.read_ndjson(path, infer_schema_length=10_000))
        except pl.exceptions.PolarsError:
            unreadable += 1
    frame = pl.concat(frames, how="diagonal_relaxed")
    frame.write_delta(f"{lake_dir}/product_views_reference", mode="overwrite")
    return {
        "seconds": time.perf_counter() - started,
        "rows_read": frame.height,
        "files": len(files),
        "files_unreadable": unreadable,
    }


STEPS = {
    "generate": generate,
    "ingest_with_product": ingest_with_product,
    "ingest_with_plain_polars": ingest_with_plain_polars,
}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    step, *arguments = sys.argv[1:]
    figures = STEPS[step](*arguments)
    sys.stdout.write(json.dumps({**figures, "peak_rss_mib": peak_rss_mib()}) + "\n")

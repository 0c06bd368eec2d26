"""`make bench`: every benchmark at its stated scale, figures into reports/benchmarks.*."""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.report import MARKDOWN_REPORT, record
from benchmarks.steps import day_files

REPO_ROOT = Path(__file__).resolve().parent.parent
# The last whole day of the synthetic clickstream (the history ends 2026-11-30 00:00 UTC).
CLICKSTREAM_DAY = "2026-11-29"


def run_step(*arguments: str) -> dict:
    """Run one measured step in a fresh process and return its figures."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.steps", *arguments],
        cwd=REPO_ROOT,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def bench_generation(data_dir: Path, scale: str) -> None:
    print(f"generating the {scale} scale into {data_dir} ...", flush=True)
    figures = run_step("generate", str(data_dir), scale)
    counts = figures["counts"]
    record(
        f"generate_{scale}",
        {
            "description": f"`contoso-recs generate --scale {scale}`: every source system "
            "written from scratch (SQLite, JSON lines, PNG images, CRM pages).",
            "scale": scale,
            "seconds": figures["seconds"],
            "peak_rss_mib": figures["peak_rss_mib"],
            "customers": counts["customers"],
            "products": counts["products"],
            "orders": counts["orders"],
            "order_lines": counts["order_lines"],
            "product_views": counts["product_views"],
        },
    )


def clean_copy_of_day(data_dir: Path, target: Path) -> int:
    """Copy the day's files without their malformed lines, which plain polars cannot read.

    Returns how many lines were left out. The catalogue is linked, not copied.
    """
    sources = target / "sources"
    (sources / "blob").mkdir(parents=True, exist_ok=True)
    (sources / "transactions.sqlite").symlink_to(data_dir / "sources" / "transactions.sqlite")
    dropped = 0
    for path in day_files(str(data_dir), CLICKSTREAM_DAY):
        relative = path.relative_to(data_dir)
        kept = []
        for line in path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                kept.append(line)
            else:
                dropped += 1
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        (target / relative).write_bytes(b"\n".join(kept) + b"\n")
    return dropped


def bench_clickstream_ingestion(data_dir: Path, scale: str) -> None:
    print(f"ingesting one day ({CLICKSTREAM_DAY}) of clickstream ...", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        clean = Path(scratch) / "clean"
        dropped = clean_copy_of_day(data_dir, clean)
        lakes = [Path(scratch) / name for name in ("reference", "product", "product_raw")]
        reference = run_step("ingest_with_plain_polars", str(clean), CLICKSTREAM_DAY, str(lakes[0]))
        product = run_step("ingest_with_product", str(clean), CLICKSTREAM_DAY, str(lakes[1]))
        as_landed = run_step("ingest_with_product", str(data_dir), CLICKSTREAM_DAY, str(lakes[2]))
    rows = product["rows_read"]
    record(
        "clickstream_ingestion",
        {
            "description": "One day of product views, JSON lines to the `product_views` Delta "
            "table: the product (the `clickstream_hourly` job over 24 hours as one run: parse, "
            "type, validate, deduplicate, quarantine, replace the partitions) beside plain "
            "polars reading the same files and writing them as a Delta table with no checks. "
            "Plain polars cannot read a file holding a malformed line, so both read a copy of "
            "the day without its malformed lines; the product is also measured on the files as "
            "they landed.",
            "scale": scale,
            "day": CLICKSTREAM_DAY,
            "files": reference["files"],
            "malformed_lines_left_out_of_copy": dropped,
            "rows_read": rows,
            "rows_loaded": product["rows_loaded"],
            "rows_quarantined": product["rows_quarantined"],
            "product_seconds": product["seconds"],
            "product_rows_per_second": rows / product["seconds"],
            "product_peak_rss_mib": product["peak_rss_mib"],
            "reference_seconds": reference["seconds"],
            "reference_rows_per_second": reference["rows_read"] / reference["seconds"],
            "reference_peak_rss_mib": reference["peak_rss_mib"],
            "time_ratio_product_to_reference": product["seconds"] / reference["seconds"],
            "as_landed_rows_read": as_landed["rows_read"],
            "as_landed_rows_quarantined": as_landed["rows_quarantined"],
            "as_landed_product_seconds": as_landed["seconds"],
            "as_landed_product_rows_per_second": as_landed["rows_read"] / as_landed["seconds"],
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", default="full", choices=["tiny", "demo", "full"])
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data" / "bench")
    parser.add_argument(
        "--reuse-data", action="store_true", help="skip generation if the data dir is filled"
    )
    args = parser.parse_args()

    manifest = args.data_dir / "sources" / "manifest.json"
    reuse = args.reuse_data and manifest.exists()
    if not reuse:
        shutil.rmtree(args.data_dir, ignore_errors=True)
        bench_generation(args.data_dir, args.scale)
    bench_clickstream_ingestion(args.data_dir, args.scale)
    print(f"figures written to {MARKDOWN_REPORT} and {MARKDOWN_REPORT.with_suffix('.json')}")


if __name__ == "__main__":
    main()

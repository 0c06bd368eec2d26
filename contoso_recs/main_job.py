"""The main job of the embedded environment: every stage, in order, on the local instance.

Runs go through the Dagster instance under `DAGSTER_HOME`, so each one is visible in the UI
afterwards with its logs, metadata and checks.
"""

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from contoso_recs.automation.clickstream_sensor import contiguous_ranges
from contoso_recs.automation.jobs import clickstream_job, lake_refresh_job
from contoso_recs.automation.weekly import (
    RETRAIN_RUN_TAG,
    WEEK_TAG,
    retrain_run_config,
    week_of,
    weekly_email_job,
    weekly_retrain_job,
)
from contoso_recs.definitions import build_definitions
from contoso_recs.demo_data import completejourney, layout, synthetic
from contoso_recs.environment import Environment, local_resources, resolve_environment
from contoso_recs.lake import keys
from contoso_recs.lake.quarantine import QUARANTINE_TABLE
from contoso_recs.resources.lake import Lake
from contoso_recs.resources.landing import CLICKSTREAM_CONTAINER, LandingZone
from contoso_recs.resources.model_store import ModelStore
from contoso_recs.resources.serving_store import ServingStore
from contoso_recs.settings import ENVIRONMENT_ENV_VAR
from contoso_recs.sources.clickstream import HOURLY_PARTITIONS, hour_fingerprints
from contoso_recs.weekly_email.assets import TABLE as WEEKLY_TABLE

log = logging.getLogger(__name__)

Report = Callable[[str], None]
# Run logs at INFO: what each step read, loaded, quarantined and wrote.
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
# Two epochs keep the demo short; the evaluation and `make evaluate` train longer.
DEMO_TRAINING = {"epochs": 2}
# Orders a backtest needs before its week: the candidate trains on those before the 7 days
# preceding the week, and the blend's 4-week popularity needs 28 days.
BACKTEST_HISTORY_DAYS = 28


# Run retries on, none by default: the source loads ask for theirs (jobs.RETRIED_LOAD); the
# daemon of `make ui` (dagster dev) starts them.
INSTANCE_CONFIG = """telemetry:
  enabled: false
nux:
  enabled: false
run_retries:
  enabled: true
  max_retries: 0
"""

# Runs made here run in this process, which the instance's daemon cannot start again: they are
# not marked for retry (the report says what failed, and the command can be run again).
NOT_RETRIED = {"dagster/max_retries": "0"}


@dataclass(frozen=True)
class StepOutcome:
    job: str
    run_id: str
    success: bool
    partitions: str = ""


def instance_config(dagster_home: str | Path) -> Path:
    """The local instance's dagster.yaml (INSTANCE_CONFIG), written when it has none."""
    config = Path(dagster_home) / "dagster.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    if not config.exists():
        config.write_text(INSTANCE_CONFIG)
    elif "run_retries" not in config.read_text():
        log.warning(
            "%s does not turn run retries on: failed source loads will not be retried (add "
            "'run_retries: {enabled: true}' to it, see README)",
            config,
        )
    return config


def local_instance(dagster_home: Path) -> dg.DagsterInstance:
    """The persistent local instance the UI (`make ui`) reads as well."""
    instance_config(dagster_home)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dg.DagsterInstance.get()


def run_main_job(
    definitions: dg.Definitions,
    instance: dg.DagsterInstance,
    report: Report,
    train_model: bool = True,
    week: date | None = None,
    training: dict | None = None,
) -> list[StepOutcome]:
    """Refresh the lake, load every landed hour of product views, then the weekly flow: retrain
    behind the gate and write the top-5 table of `week` (default: the week the data ends in)."""
    outcomes = []

    report("Refreshing the lake from the transactional database, the CRM and product images")
    result = definitions.resolve_job_def(lake_refresh_job.name).execute_in_process(
        instance=instance, run_config=RUN_CONFIG, tags=NOT_RETRIED, raise_on_error=False
    )
    outcomes.append(StepOutcome(lake_refresh_job.name, result.run_id, result.success))
    if not result.success:
        return outcomes

    landing: LandingZone = definitions.resources["landing_zone"]
    available = set(HOURLY_PARTITIONS.get_partition_keys())
    hours = sorted(set(hour_fingerprints(landing.list_files(CLICKSTREAM_CONTAINER))) & available)
    ranges = contiguous_ranges(hours)
    if not hours:
        # Record the empty source in the lake too: the latest hour, loaded with nothing in it.
        ranges = [[HOURLY_PARTITIONS.get_last_partition_key()]]
        report(
            "The clickstream landing zone holds no files: product views stay empty "
            f"(loading the latest hour, {ranges[0][0]}, as an empty partition)"
        )

    job = definitions.resolve_job_def(clickstream_job.name)
    for hour_range in ranges:
        first, last = hour_range[0], hour_range[-1]
        report(f"Loading product views for {len(hour_range)} hours, {first} to {last}")
        result = job.execute_in_process(
            instance=instance,
            run_config=RUN_CONFIG,
            tags={
                ASSET_PARTITION_RANGE_START_TAG: first,
                ASSET_PARTITION_RANGE_END_TAG: last,
                **NOT_RETRIED,
            },
            raise_on_error=False,
        )
        outcomes.append(
            StepOutcome(clickstream_job.name, result.run_id, result.success, f"{first}..{last}")
        )
        if not result.success:
            break
    if not train_model or not all(outcome.success for outcome in outcomes):
        return outcomes

    week = week or demo_week(definitions.resources["lake"])
    return outcomes + run_weekly_flow(definitions, instance, report, week, training)


def demo_week(lake: Lake) -> date:
    """The week the data ends in: the Monday on or before the day after the latest order."""
    latest = lake.scan("orders").select(pl.col("ordered_at").max()).collect().item()
    if latest is None:
        raise ValueError("the lake has no orders yet: materialise lake/orders first")
    return week_of(latest + timedelta(days=1))


def run_weekly_flow(
    definitions: dg.Definitions,
    instance: dg.DagsterInstance,
    report: Report,
    week: date,
    training: dict | None = None,
) -> list[StepOutcome]:
    """What the Monday schedule and its sensor do for `week`: retrain behind the promotion gate,
    then write the week's top-5 table with whichever model is promoted."""
    key = week.isoformat()
    retrain = retrain_run_config(week)
    retrain["ops"]["model__two_tower_candidate"]["config"].update(training or {})
    report(
        f"Week of {key}: training a candidate on orders before "
        f"{retrain['ops']['model__two_tower_candidate']['config']['cutoff']}, evaluating it on "
        "the 7 days after, promoting it through the gate"
    )
    result = definitions.resolve_job_def(weekly_retrain_job.name).execute_in_process(
        instance=instance,
        run_config={**RUN_CONFIG, **retrain},
        tags={WEEK_TAG: key},
        raise_on_error=False,
    )
    gate = [e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate"]
    if gate and not gate[0].passed:
        report(f"The promotion gate stopped the candidate: {gate[0].metadata['failures'].value}")
    outcomes = [StepOutcome(weekly_retrain_job.name, result.run_id, result.success)]

    report(f"Writing the top-5 table for the week of {key} with the promoted model")
    result = definitions.resolve_job_def(weekly_email_job.name).execute_in_process(
        instance=instance,
        run_config=RUN_CONFIG,
        partition_key=key,
        tags={RETRAIN_RUN_TAG: result.run_id},
        raise_on_error=False,
    )
    for failure in step_failures(result):
        report(f"The top-5 table for the week of {key} was not written: {failure}")
    outcomes.append(StepOutcome(weekly_email_job.name, result.run_id, result.success, key))
    return outcomes


def step_failures(result: dg.ExecuteInProcessResult) -> list[str]:
    """What went wrong in each failed step of a run: the innermost error's message."""
    messages = []
    for event in result.all_events:
        if not event.is_step_failure or event.step_failure_data.error is None:
            continue
        error = event.step_failure_data.error
        while error.cause is not None:
            error = error.cause
        messages.append(error.message.strip())
    return messages


def weekly_summary(lake: Lake, week: date) -> list[str]:
    """The week's table: where it is, its size, its reasons, and how it did if the week is known.

    When the lake already holds orders of that week (a backtest), the share of the week's buyers
    who bought at least one of their 5 products is reported beside the table.
    """
    if not lake.exists(WEEKLY_TABLE):
        return ["No weekly top-5 table has been written."]
    table = lake.scan(WEEKLY_TABLE).filter(pl.col("week") == week).collect()
    if table.is_empty():
        return [f"The weekly top-5 table has no partition for the week of {week}."]
    reasons = ", ".join(
        f"{r} {n:,}" for r, n in table.group_by("reason").len().sort("reason").rows()
    )
    lines = [
        f"Weekly top-5 table, week of {week}: {lake.uri(WEEKLY_TABLE)}/week={week}",
        f"  {table.height:,} rows, {table['customer_id'].n_unique():,} customers, "
        f"{table['product_id'].n_unique():,} distinct products, model "
        f"{table['model_version'][0]}",
        f"  reasons: {reasons}",
    ]
    start = datetime.combine(week, datetime.min.time(), tzinfo=UTC)
    bought = (
        lake.scan("order_lines")
        .join(lake.scan("orders"), on="order_id")
        .filter(pl.col("ordered_at").is_between(start, start + timedelta(days=7), closed="left"))
        .select("customer_id", "product_id")
        .unique()
        .collect()
    )
    buyers = bought["customer_id"].n_unique()
    if buyers:
        hits = table.join(bought, on=["customer_id", "product_id"]).select("customer_id").n_unique()
        lines.append(
            f"  that week {buyers:,} customers ordered; {hits:,} of them "
            f"({hits / buyers:.1%}) bought at least one of their 5 products"
        )
    return lines


def model_summary(store: ModelStore) -> list[str]:
    """The promoted model and how it compares with popularity on next week's purchases."""
    version = store.current_version()
    if version is None:
        return ["No model has been promoted yet."]
    card = store.card(version)
    lines = [
        f"Promoted model {version} ({store.version_dir(version)}), trained before {card['cutoff']}"
    ]
    lines.append(
        "  HR@5 / NDCG@5 on the week after its cutoff: the shipped blend (this model's "
        "candidates with repeat purchases, co-purchases, categories and popularity; task A "
        "ranked by the rule learned on that week, each customer by a rule fit on the others; "
        "task B by the shipped weights, ALS preference and the week's mailer included) "
        "beside the model alone and the baselines"
    )
    names = {
        "blend": "shipped blend",
        "two_tower": "model alone",
        "buy_again": "buy again",
        "popularity": "popularity",
    }
    for task, label in (("A", "any product"), ("B", "products new to the customer")):
        figures = card.get("evaluation", {}).get(task, {})
        shown = [
            f"{name} {figures[method]['hr@5']:.3f} / {figures[method]['ndcg@5']:.3f}"
            for method, name in names.items()
            if method in figures
        ]
        if shown:
            lines.append(f"  task {task} ({label}): " + ", ".join(shown))
    return lines


def lake_summary(lake: Lake) -> list[str]:
    """One line per lake table: rows, Delta version and where it is."""
    lines = []
    for table in map(keys.table_name, keys.LAKE_TABLES):
        if not lake.exists(table):
            lines.append(f"  {table:<24} (not written)")
            continue
        lines.append(
            f"  {table:<24} {lake.row_count(table):>12,} rows  version {lake.version(table):<4} "
            f"{lake.uri(table)}"
        )
    if lake.exists(QUARANTINE_TABLE):
        counts = (
            lake.read(QUARANTINE_TABLE)
            .group_by("target_table", "reason")
            .len()
            .sort("target_table", "reason")
        )
        lines.append(f"  quarantined rows ({lake.uri(QUARANTINE_TABLE)}):")
        lines += [f"    {t:<22} {r:<30} {n:>8,}" for t, r, n in counts.iter_rows()]
    return lines


def mirrored_sources_marker(data_dir: Path) -> Path:
    """The manifest of the sources the lake was last built from, kept beside the tables."""
    return data_dir / "lake" / "_sources_manifest.json"


def forget_lake_of_other_sources(data_dir: Path, dagster_home: Path, report: Report) -> None:
    """Start the lake, the watermarks and the models afresh when the sources were regenerated
    under them: a model of other customers and products cannot judge, nor serve, these."""
    lake_dir, marker = data_dir / "lake", mirrored_sources_marker(data_dir)
    current = layout.manifest_path(data_dir).read_text()
    if not lake_dir.exists() or (marker.exists() and marker.read_text() == current):
        return
    models, serving, backtests = data_dir / "models", data_dir / "serving", data_dir / "backtests"
    report(
        f"The sources changed since the lake was built: removing {lake_dir}, the local "
        f"Dagster instance {dagster_home} (runs, watermarks), the models in {models}, the "
        f"serving bundles in {serving} and the backtests in {backtests}, so the lake mirrors "
        "the new sources and the first model trained on them is promoted"
    )
    for stale in (lake_dir, dagster_home, models, serving, backtests):
        shutil.rmtree(stale, ignore_errors=True)


def prepare_sources(data_dir: Path, dataset: str, scale: str, seed: int, report: Report) -> bool:
    """Fill the local sources unless they already hold this dataset; True if (re)written."""
    manifest_file = layout.manifest_path(data_dir)
    if manifest_file.exists():
        manifest = layout.read_manifest(data_dir)
        same_scale = dataset == "completejourney" or (
            manifest.get("scale") == scale and manifest.get("seed") == seed
        )
        current_layout = manifest.get("layout", 1) == layout.SOURCES_LAYOUT
        promotions_since = dataset == "completejourney" and completejourney_promotions_since(
            manifest
        )
        if (
            manifest.get("dataset") == dataset
            and same_scale
            and current_layout
            and not promotions_since
        ):
            report(f"Reusing the {dataset} sources already in {layout.sources_root(data_dir)}")
            return False
        if not current_layout:
            report(
                f"The sources in {layout.sources_root(data_dir)} were written by an earlier "
                "version (no promotions table): writing them again"
            )
        elif promotions_since:
            report(
                "The Complete Journey's promotions were missing when its sources were written "
                "and are found now: writing them again"
            )
    if dataset == "completejourney":
        report("Loading The Complete Journey into the local sources")
        completejourney.load(data_dir)
    else:
        report(f"Generating the synthetic retailer at {scale} scale (seed {seed})")
        synthetic.generate(data_dir, scale, seed)
    return True


def completejourney_promotions_since(manifest: dict) -> bool:
    """Whether The Complete Journey was loaded without its promotions, which are there now."""
    if manifest.get("dataset") != "completejourney" or manifest["counts"].get("promotions"):
        return False
    try:
        source_dir = completejourney.default_source_dir()
    except FileNotFoundError:
        return False
    return completejourney.promotions_path(source_dir) is not None


def backtest_week_problem(manifest: dict, week: date) -> str | None:
    """Why `week` cannot be backtested on the sources of `manifest`, or None if it can: the
    week must start before the data ends, with at least BACKTEST_HISTORY_DAYS of orders
    before it to train on."""
    start = datetime.fromisoformat(manifest["history_start"]).date()
    end = datetime.fromisoformat(manifest["history_end"]).date()
    first = week_of(datetime.combine(start, datetime.min.time(), tzinfo=UTC)) + timedelta(
        days=BACKTEST_HISTORY_DAYS + 7
    )
    last = week_of(datetime.combine(end - timedelta(days=1), datetime.min.time(), tzinfo=UTC))
    if first <= week <= last:
        return None
    return (
        f"the {manifest['dataset']} orders run from {start} to {end}: a backtest needs "
        f"{BACKTEST_HISTORY_DAYS} days of orders before the week to train on and a week the data "
        f"reaches, so pick a Monday from {first} to {last}"
    )


def demo(
    data_dir: Path,
    dataset: str,
    scale: str,
    seed: int,
    report: Report,
    train_model: bool = True,
    week: date | None = None,
    backtest: bool = False,
) -> bool:
    """Sources → lake → model → the week's top-5 table on the local environment, reported step by
    step; True on success.

    A backtest (`backtest=True`, `week` in the past) trains with the full number of epochs and
    keeps everything but the lake apart, under backtests/<week>/: its own Dagster instance, model
    versions and serving bundle, so it never changes which model the live flow has promoted or
    serves, nor what the live instance records; its table is the week's partition of the lake's
    weekly table.
    """
    dagster_home = data_dir / "dagster_home"
    environment = resolve_environment()
    if environment is not Environment.LOCAL:
        report(
            f"The demo runs the embedded local environment, but {ENVIRONMENT_ENV_VAR} selects "
            f"'{environment}'. Unset it (or set it to 'local') to run the demo."
        )
        return False
    if week is not None and week.weekday() != 0:
        report(f"{week} is a {week:%A}: a week starts on a Monday")
        return False
    prepare_sources(data_dir, dataset, scale, seed, report)
    if backtest and (problem := backtest_week_problem(layout.read_manifest(data_dir), week)):
        report(problem)
        return False
    forget_lake_of_other_sources(data_dir, dagster_home, report)
    resources = local_resources(data_dir)
    if backtest:
        apart = data_dir / "backtests" / week.isoformat()
        dagster_home = apart / "dagster_home"
        resources["model_store"] = ModelStore(root=str(apart / "models"))
        resources["serving_store"] = ServingStore(root=str(apart / "serving"))
        report(
            f"Backtest of the week of {week}: its runs, models and serving bundle are kept in "
            f"{apart}; the live instance, promoted model and serving bundle are left as they are"
        )
    instance = local_instance(dagster_home)
    definitions = build_definitions(resources)
    training = {} if backtest else DEMO_TRAINING
    outcomes = run_main_job(definitions, instance, report, train_model, week, training)
    if all(outcome.success for outcome in outcomes):
        mirrored_sources_marker(data_dir).write_text(layout.manifest_path(data_dir).read_text())

    report("")
    for outcome in outcomes:
        status = "succeeded" if outcome.success else "FAILED"
        suffix = f" [{outcome.partitions}]" if outcome.partitions else ""
        report(f"run {outcome.run_id[:8]} {outcome.job}{suffix}: {status}")
    report("")
    report("Lake tables:")
    for line in lake_summary(resources["lake"]):
        report(line)
    report("")
    for line in model_summary(resources["model_store"]):
        report(line)
    if train_model and outcomes[-1].job == weekly_email_job.name:
        report("")
        for line in weekly_summary(resources["lake"], date.fromisoformat(outcomes[-1].partitions)):
            report(line)
    report("")
    report(f"Dagster instance: {dagster_home}")
    ui = f"make ui DAGSTER_HOME={dagster_home}" if backtest else "make ui"
    report(
        f"Open the UI on it with `{ui}`, then http://127.0.0.1:3000 (Lineage, Catalog, Runs, "
        "Automation)."
    )
    return all(outcome.success for outcome in outcomes)

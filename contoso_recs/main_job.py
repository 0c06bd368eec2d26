"""The main job of the embedded environment: every stage, in order, on the local instance.

Runs go through the Dagster instance under `DAGSTER_HOME`, so each one is visible in the UI
afterwards with its logs, metadata and checks.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from contoso_recs.automation.clickstream_sensor import contiguous_ranges, hour_fingerprints
from contoso_recs.automation.jobs import clickstream_job, lake_refresh_job
from contoso_recs.definitions import defs
from contoso_recs.resources.landing import CLICKSTREAM_CONTAINER, LandingZone
from contoso_recs.sources.clickstream import HOURLY_PARTITIONS

Report = Callable[[str], None]


@dataclass(frozen=True)
class StepOutcome:
    job: str
    run_id: str
    success: bool
    partitions: str = ""


def local_instance(dagster_home: Path) -> dg.DagsterInstance:
    """The persistent local instance the UI (`make ui`) reads as well."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dg.DagsterInstance.get()


def run_main_job(instance: dg.DagsterInstance, report: Report) -> list[StepOutcome]:
    """Refresh the lake from every source, then load every landed hour of product views."""
    definitions = defs()
    outcomes = []

    report("Refreshing the lake from the transactional database, the CRM and product images")
    result = definitions.resolve_job_def(lake_refresh_job.name).execute_in_process(
        instance=instance, raise_on_error=False
    )
    outcomes.append(StepOutcome(lake_refresh_job.name, result.run_id, result.success))
    if not result.success:
        return outcomes

    landing: LandingZone = definitions.resources["landing_zone"]
    available = set(HOURLY_PARTITIONS.get_partition_keys())
    hours = sorted(set(hour_fingerprints(landing.list_files(CLICKSTREAM_CONTAINER))) & available)
    if not hours:
        report("The clickstream landing zone holds no files: product views stay empty")
        return outcomes

    job = definitions.resolve_job_def(clickstream_job.name)
    for hour_range in contiguous_ranges(hours):
        first, last = hour_range[0], hour_range[-1]
        report(f"Loading product views for {len(hour_range)} hours, {first} to {last}")
        result = job.execute_in_process(
            instance=instance,
            tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
            raise_on_error=False,
        )
        outcomes.append(
            StepOutcome(clickstream_job.name, result.run_id, result.success, f"{first}..{last}")
        )
        if not result.success:
            break
    return outcomes

"""The clickstream sensor: load each hour of product views once its files have landed."""

import hashlib
import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from contoso_recs.automation.jobs import clickstream_job
from contoso_recs.lake import keys
from contoso_recs.lake.quarantine import QUARANTINE_TABLE
from contoso_recs.resources.lake import Lake
from contoso_recs.resources.landing import CLICKSTREAM_CONTAINER, LandingZone
from contoso_recs.sources.clickstream import (
    HOURLY_PARTITIONS,
    LOADED_FILES_TABLE,
    PARTITION_FORMAT,
    hour_fingerprints,
    hour_of,
)

# A first tick over months of landed files asks for a few long runs, not one run per hour.
MAX_HOURS_PER_RUN = 24 * 7
MAX_RUNS_PER_TICK = 4
# Late files are looked for this far back; older hours are settled.
CURSOR_RETENTION = timedelta(days=14)


def hours_loaded_from(lake: Lake, fingerprints: dict[str, str]) -> set[str]:
    """Of these hours (partition key: fingerprint of its files now), those whose product views
    were last loaded from exactly these files (`LOADED_FILES_TABLE`): by `make demo`, a run from
    the UI, or before the cursor was reset."""
    if not fingerprints or not lake.exists(LOADED_FILES_TABLE):
        return set()
    loaded = (
        lake.scan(LOADED_FILES_TABLE)
        .filter(pl.col("landed_hour").is_in(sorted(fingerprints)))
        .select("landed_hour", "files_fingerprint")
        .collect()
    )
    return {hour for hour, files in loaded.iter_rows() if fingerprints[hour] == files}


def contiguous_ranges(partition_keys: list[str]) -> list[list[str]]:
    """Group sorted hourly partition keys into runs of consecutive hours, each bounded in size."""
    ranges: list[list[str]] = []
    previous = None
    for key in sorted(partition_keys):
        hour = datetime.strptime(key, PARTITION_FORMAT)
        consecutive = previous is not None and (hour - previous).total_seconds() == 3600
        if ranges and consecutive and len(ranges[-1]) < MAX_HOURS_PER_RUN:
            ranges[-1].append(key)
        else:
            ranges.append([key])
        previous = hour
    return ranges


def run_request_for(hours: list[str], fingerprints: dict[str, str]) -> dg.RunRequest:
    digest = hashlib.sha1("".join(fingerprints[h] for h in hours).encode()).hexdigest()[:16]
    run_key = f"{hours[0]}..{hours[-1]}:{digest}"
    if len(hours) == 1:
        return dg.RunRequest(run_key=run_key, partition_key=hours[0])
    return dg.RunRequest(
        run_key=run_key,
        tags={ASSET_PARTITION_RANGE_START_TAG: hours[0], ASSET_PARTITION_RANGE_END_TAG: hours[-1]},
    )


@dg.sensor(
    job=clickstream_job,
    minimum_interval_seconds=60,
    description="Requests a load for every hour whose clickstream files arrived or changed.",
)
def clickstream_sensor(
    context: dg.SensorEvaluationContext, landing_zone: LandingZone, lake: Lake
) -> dg.SensorResult | dg.SkipReason:
    """Compares each landed hour's files with the cursor and asks for runs of changed hours.

    The cursor keeps the fingerprint of each recent hour already requested, so a late or
    replaced file re-requests its hour and an unchanged landing zone requests nothing. An hour
    the cursor has not seen is not requested when its product views were last loaded from the
    very files it holds now (the first tick after `make demo` asks for nothing). Hours older
    than the retention window are settled: a file landing for them is not looked at.
    """
    cursor = json.loads(context.cursor) if context.cursor else {}
    seen: dict[str, str] = cursor.get("hours", {})
    settled_before: str = cursor.get("settled_before", "")
    now = datetime.now(UTC)
    available = set(HOURLY_PARTITIONS.get_partition_keys(current_time=now))
    files = landing_zone.list_files(CLICKSTREAM_CONTAINER)
    misplaced = sorted(f.path for f in files if hour_of(f.path) is None)
    if misplaced:
        context.log.warning(
            f"{len(misplaced)} clickstream files are not in an hour's folder (YYYY/MM/DD/HH/, "
            f"zero-padded) and are not loaded, e.g. {', '.join(misplaced[:3])}"
        )
    fingerprints = hour_fingerprints(files)
    changed = sorted(
        key
        for key, fingerprint in fingerprints.items()
        if key in available and key >= settled_before and seen.get(key) != fingerprint
    )
    # Hours the cursor has never seen may have been loaded already, by `make demo` or by hand.
    loaded = hours_loaded_from(lake, {key: fingerprints[key] for key in changed if key not in seen})
    if loaded:
        seen.update({key: fingerprints[key] for key in loaded})
        changed = [key for key in changed if key not in loaded]
        context.log.info(
            f"{len(loaded)} landed hours were already loaded from the files they hold now, by "
            "runs this sensor did not ask for; they are not loaded again"
        )
    if not changed:
        reason = f"No new clickstream files in {len(fingerprints)} landed hours."
        if not loaded:
            return dg.SkipReason(reason)
        return dg.SensorResult(skip_reason=reason, cursor=next_cursor(cursor, seen, [], now))

    ranges = contiguous_ranges(changed)[:MAX_RUNS_PER_TICK]
    for hours in ranges:
        seen.update({key: fingerprints[key] for key in hours})
    requested = sum(len(hours) for hours in ranges)
    pending = changed[requested:]
    context.log.info(
        f"{len(changed)} hours with new or changed files; requesting {len(ranges)} runs "
        f"covering {requested} hours, {len(pending)} left for the next ticks"
    )
    return dg.SensorResult(
        run_requests=[run_request_for(hours, fingerprints) for hours in ranges],
        cursor=next_cursor(cursor, seen, pending, now),
    )


def next_cursor(cursor: dict, seen: dict[str, str], pending: list[str], now: datetime) -> str:
    """The hours requested or found loaded, from the first one not settled: the retention
    horizon, or the first hour still waiting for its run when that is older."""
    horizon = (now - CURSOR_RETENTION).strftime(PARTITION_FORMAT)
    settled_before = min([horizon, *pending[:1]])
    kept = {
        "settled_before": max(settled_before, cursor.get("settled_before", "")),
        "hours": {key: value for key, value in seen.items() if key >= settled_before},
    }
    return json.dumps(kept, sort_keys=True)


def hours_awaiting_products(lake: Lake, since: str) -> tuple[list[str], int]:
    """Hours from `since` (a partition key) holding views quarantined as `unknown_product`
    whose product is in the catalogue now, and how many such views there are."""
    if not (lake.exists(QUARANTINE_TABLE) and lake.exists("products")):
        return [], 0
    awaiting = (
        lake.scan(QUARANTINE_TABLE)
        .filter(
            (pl.col("target_table") == "product_views")
            & (pl.col("reason") == "unknown_product")
            & (pl.col("partition_key") >= since)
        )
        .select(
            "partition_key",
            product_id=pl.col("raw")
            .str.json_path_match("$.product_id")
            .str.strip_chars()
            .cast(pl.Int64, strict=False),
        )
        .join(lake.scan("products").select("product_id").unique(), on="product_id", how="semi")
        .collect()
    )
    return sorted(set(awaiting["partition_key"])), awaiting.height


@dg.asset_sensor(
    asset_key=keys.PRODUCTS,
    job=clickstream_job,
    description=(
        "When the catalogue is refreshed, reloads the recent hours whose product views were "
        "quarantined for a product the catalogue did not hold yet."
    ),
)
def views_awaiting_products_sensor(
    context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry, lake: Lake
) -> dg.SensorResult | dg.SkipReason:
    """The catalogue loads with the weekly refresh and product views hourly, so views of a
    product launched since the last refresh are quarantined as `unknown_product`. Each time
    the catalogue materialises, every hour of the last CURSOR_RETENTION holding such views of
    a product it now holds is loaded again (a whole hour is replaced, so reloading is safe)."""
    since = (datetime.now(UTC) - CURSOR_RETENTION).strftime(PARTITION_FORMAT)
    hours, views = hours_awaiting_products(lake, since)
    available = set(HOURLY_PARTITIONS.get_partition_keys(current_time=datetime.now(UTC)))
    hours = [hour for hour in hours if hour in available]
    if not hours:
        return dg.SkipReason("No recent product views await a product the catalogue now holds.")
    # One run over the span of those hours: runs of the product views at the same time could
    # each miss a view the other loads (a re-sent copy), so this sensor asks for one.
    span = HOURLY_PARTITIONS.get_partition_keys_in_range(dg.PartitionKeyRange(hours[0], hours[-1]))
    context.log.info(
        f"{views} quarantined product views in {len(hours)} hours are of products the "
        f"catalogue now holds; requesting one run to load the {len(span)} hours from "
        f"{span[0]} to {span[-1]} again"
    )
    refresh = f"{asset_event.run_id}@{asset_event.timestamp}"
    return dg.SensorResult(
        run_requests=[run_request_for(span, dict.fromkeys(span, f"products@{refresh}"))]
    )

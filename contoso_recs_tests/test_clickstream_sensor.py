"""The clickstream sensor, ticked against a real (ephemeral) Dagster instance.

Files are landed in a local landing zone under the test's own folder, and the sensor's clock is
frozen so that which hours have ended, and which are settled, never depends on the day the
tests run.
"""

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

import contoso_recs.automation.clickstream_sensor as sensor_module
from contoso_recs.automation.clickstream_sensor import (
    MAX_HOURS_PER_RUN,
    MAX_RUNS_PER_TICK,
    clickstream_sensor,
    views_awaiting_products_sensor,
)
from contoso_recs.automation.jobs import LOAD_RETRIES
from contoso_recs.definitions import defs
from contoso_recs.demo_data.layout import clickstream_root
from contoso_recs.environment import local_resources
from contoso_recs.lake import keys
from contoso_recs.lake.quarantine import QUARANTINE_TABLE
from contoso_recs.main_job import local_instance
from contoso_recs.resources.lake import Lake
from contoso_recs.resources.landing import LocalLandingZone
from contoso_recs.settings import DATA_DIR_ENV_VAR, ENVIRONMENT_ENV_VAR
from contoso_recs.sources.clickstream import PARTITION_FORMAT

# Half past noon: the hour 2026-11-25-12:00 is still open, 11:00 has ended.
NOW = datetime(2026, 11, 25, 12, 30, tzinfo=UTC)

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"

SensorOutcome = dg.SensorResult | dg.SkipReason


@dataclass
class Clock:
    now: datetime


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The sensor's clock, frozen at NOW; a test moves it by assigning `clock.now`."""
    frozen = Clock(NOW)

    class FrozenDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return frozen.now.astimezone(tz)

    monkeypatch.setattr(sensor_module, "datetime", FrozenDatetime)
    return frozen


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


@pytest.fixture
def landing_root(tmp_path: Path) -> Path:
    return tmp_path / "blob"


@pytest.fixture
def tick(
    clock: Clock, instance: dg.DagsterInstance, landing_root: Path
) -> Callable[..., SensorOutcome]:
    """One evaluation of the sensor over `landing_root`, from the given cursor."""

    def evaluate(cursor: str | None = None) -> SensorOutcome:
        context = dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            resources={
                "landing_zone": LocalLandingZone(root=str(landing_root)),
                "lake": Lake(root_uri=str(landing_root.parent / "lake")),
            },
        )
        return clickstream_sensor(context)

    return evaluate


def land(root: Path, hour: str, part: int = 0, text: str = "{}\n") -> None:
    """Land one clickstream file for the hour whose partition key is `hour`."""
    start = datetime.strptime(hour, PARTITION_FORMAT)
    folder = root / "clickstream" / start.strftime("%Y/%m/%d/%H")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"part-{part:04d}.jsonl").write_text(text, encoding="utf-8")


def hour_keys(first: datetime, count: int) -> list[str]:
    return [(first + timedelta(hours=n)).strftime(PARTITION_FORMAT) for n in range(count)]


def span(request: dg.RunRequest) -> tuple[str, str]:
    """The first and last hour a run request asks for."""
    if request.partition_key is not None:
        return request.partition_key, request.partition_key
    return request.tags[RANGE_START], request.tags[RANGE_END]


def hours_of(request: dg.RunRequest) -> list[str]:
    first, last = (datetime.strptime(key, PARTITION_FORMAT) for key in span(request))
    return hour_keys(first, int((last - first) / timedelta(hours=1)) + 1)


def requested_spans(outcome: SensorOutcome) -> list[tuple[str, str]]:
    assert isinstance(outcome, dg.SensorResult)
    return [span(request) for request in outcome.run_requests]


def test_nothing_landed_skips_without_run_requests(tick) -> None:
    outcome = tick()

    assert isinstance(outcome, dg.SkipReason)
    assert outcome.skip_message == "No new clickstream files in 0 landed hours."


def test_one_landed_hour_is_requested_by_its_partition_key(tick, landing_root) -> None:
    land(landing_root, "2026-11-20-10:00")

    outcome = tick()

    assert isinstance(outcome, dg.SensorResult)
    (request,) = outcome.run_requests
    assert request.partition_key == "2026-11-20-10:00"
    assert RANGE_START not in request.tags
    assert RANGE_END not in request.tags
    assert request.run_key.startswith("2026-11-20-10:00..2026-11-20-10:00:")


def test_two_consecutive_landed_hours_are_requested_as_one_range(tick, landing_root) -> None:
    land(landing_root, "2026-11-20-10:00")
    land(landing_root, "2026-11-20-11:00")

    outcome = tick()

    assert isinstance(outcome, dg.SensorResult)
    (request,) = outcome.run_requests
    assert request.partition_key is None
    assert request.tags[RANGE_START] == "2026-11-20-10:00"
    assert request.tags[RANGE_END] == "2026-11-20-11:00"
    assert request.run_key.startswith("2026-11-20-10:00..2026-11-20-11:00:")


def test_hours_with_a_gap_between_them_are_requested_as_separate_runs(tick, landing_root) -> None:
    land(landing_root, "2026-11-20-10:00")
    land(landing_root, "2026-11-20-12:00")

    assert requested_spans(tick()) == [
        ("2026-11-20-10:00", "2026-11-20-10:00"),
        ("2026-11-20-12:00", "2026-11-20-12:00"),
    ]


def test_a_second_tick_with_nothing_new_skips(tick, landing_root) -> None:
    land(landing_root, "2026-11-20-10:00")
    land(landing_root, "2026-11-20-11:00")
    first = tick()

    outcome = tick(first.cursor)

    assert isinstance(outcome, dg.SkipReason)
    assert outcome.skip_message == "No new clickstream files in 2 landed hours."


def test_a_new_hour_is_the_only_hour_requested(tick, landing_root) -> None:
    land(landing_root, "2026-11-20-10:00")
    land(landing_root, "2026-11-20-11:00")
    first = tick()
    land(landing_root, "2026-11-20-12:00")

    outcome = tick(first.cursor)

    assert requested_spans(outcome) == [("2026-11-20-12:00", "2026-11-20-12:00")]
    assert outcome.run_requests[0].partition_key == "2026-11-20-12:00"


def test_a_late_file_re_requests_only_its_hour(tick, landing_root) -> None:
    land(landing_root, "2026-11-20-10:00")
    land(landing_root, "2026-11-20-11:00")
    first = tick()
    land(landing_root, "2026-11-20-10:00", part=1)

    outcome = tick(first.cursor)

    assert requested_spans(outcome) == [("2026-11-20-10:00", "2026-11-20-10:00")]
    assert isinstance(tick(outcome.cursor), dg.SkipReason)


def test_a_late_file_re_requests_its_hour_under_a_new_run_key(tick, landing_root) -> None:
    land(landing_root, "2026-11-20-10:00")
    first = tick()
    land(landing_root, "2026-11-20-10:00", part=1)

    again = tick(first.cursor)

    (before,) = first.run_requests
    (after,) = again.run_requests
    assert after.partition_key == before.partition_key == "2026-11-20-10:00"
    assert after.run_key != before.run_key


def test_a_replaced_file_re_requests_its_hour(tick, landing_root) -> None:
    land(landing_root, "2026-11-20-10:00", text="{}\n")
    first = tick()
    land(landing_root, "2026-11-20-10:00", text='{"event_id": "e1"}\n')

    assert requested_spans(tick(first.cursor)) == [("2026-11-20-10:00", "2026-11-20-10:00")]


def test_the_hour_still_open_is_requested_once_it_has_ended(tick, landing_root, clock) -> None:
    land(landing_root, "2026-11-25-11:00")
    land(landing_root, "2026-11-25-12:00")

    first = tick()
    clock.now = datetime(2026, 11, 25, 13, 0, tzinfo=UTC)
    second = tick(first.cursor)

    assert requested_spans(first) == [("2026-11-25-11:00", "2026-11-25-11:00")]
    assert requested_spans(second) == [("2026-11-25-12:00", "2026-11-25-12:00")]


def test_only_an_open_hour_landed_skips(tick, landing_root) -> None:
    land(landing_root, "2026-11-25-12:00")

    outcome = tick()

    assert isinstance(outcome, dg.SkipReason)
    assert outcome.skip_message == "No new clickstream files in 1 landed hours."


def test_a_late_file_for_a_settled_hour_is_not_looked_at(tick, landing_root) -> None:
    # More than CURSOR_RETENTION (14 days) before NOW: loaded once, then settled.
    land(landing_root, "2026-11-01-10:00")
    first = tick()
    land(landing_root, "2026-11-01-10:00", part=1)

    assert requested_spans(first) == [("2026-11-01-10:00", "2026-11-01-10:00")]
    assert isinstance(tick(first.cursor), dg.SkipReason)


def tick_until_skip(tick, max_ticks: int) -> list[list[dg.RunRequest]]:
    """The run requests of each tick, carrying the cursor, until a tick skips."""
    ticks, cursor = [], None
    for _ in range(max_ticks):
        outcome = tick(cursor)
        if isinstance(outcome, dg.SkipReason):
            return ticks
        assert len(outcome.run_requests) <= MAX_RUNS_PER_TICK
        assert all(len(hours_of(r)) <= MAX_HOURS_PER_RUN for r in outcome.run_requests)
        ticks.append(outcome.run_requests)
        cursor = outcome.cursor
    pytest.fail(f"the sensor still requested runs after {max_ticks} ticks")


def test_a_40_day_backlog_is_requested_in_bounded_ticks_each_hour_once(tick, landing_root) -> None:
    backlog = hour_keys(datetime(2026, 10, 16, 12), 40 * 24)  # up to 2026-11-25-11:00
    for hour in backlog:
        land(landing_root, hour)

    ticks = tick_until_skip(tick, max_ticks=10)

    assert [[span(r) for r in requests] for requests in ticks] == [
        [
            ("2026-10-16-12:00", "2026-10-23-11:00"),
            ("2026-10-23-12:00", "2026-10-30-11:00"),
            ("2026-10-30-12:00", "2026-11-06-11:00"),
            ("2026-11-06-12:00", "2026-11-13-11:00"),
        ],
        [
            ("2026-11-13-12:00", "2026-11-20-11:00"),
            ("2026-11-20-12:00", "2026-11-25-11:00"),
        ],
    ]
    requested = [hour for requests in ticks for r in requests for hour in hours_of(r)]
    assert requested == backlog


def test_a_backlog_left_older_than_the_retention_is_still_requested_each_hour_once(
    tick, landing_root
) -> None:
    # 60 days: after the first tick, 4 days of the backlog left are older than 14 days.
    backlog = hour_keys(datetime(2026, 9, 26, 12), 60 * 24)  # up to 2026-11-25-11:00
    for hour in backlog:
        land(landing_root, hour)

    ticks = tick_until_skip(tick, max_ticks=10)

    assert [len(requests) for requests in ticks] == [4, 4, 1]
    assert span(ticks[1][0]) == ("2026-10-24-12:00", "2026-10-31-11:00")
    assert span(ticks[2][0]) == ("2026-11-21-12:00", "2026-11-25-11:00")
    requested = [hour for requests in ticks for r in requests for hour in hours_of(r)]
    assert requested == backlog


def product_view(event_id: str, product_id: int, viewed_at: str) -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "event_type": "product_view",
            "customer_id": 1,
            "session_id": "s1",
            "product_id": product_id,
            "viewed_at": viewed_at,
            "dwell_seconds": 3.5,
            "device": "ios",
        }
    )


def sensor_resources(resources: dict) -> dict:
    """What clickstream_sensor reads, of the local resources."""
    return {"landing_zone": resources["landing_zone"], "lake": resources["lake"]}


def run_requested(
    request: dg.RunRequest, instance: dg.DagsterInstance, resources: dict
) -> dg.ExecuteInProcessResult:
    """Run the hourly job as the daemon would for a sensor's run request."""
    return (
        defs()
        .resolve_job_def("clickstream_hourly")
        .execute_in_process(
            instance=instance,
            partition_key=request.partition_key,
            tags={**request.tags, "dagster/run_key": request.run_key},
            resources=resources,
        )
    )


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, Lake, Path]:
    """The local resources over a data folder whose catalogue holds products 10 and 11, its
    lake, and the Blob root where clickstream files land."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv(DATA_DIR_ENV_VAR, str(data_dir))
    monkeypatch.delenv(ENVIRONMENT_ENV_VAR, raising=False)
    lake = Lake(root_uri=str(data_dir / "lake"))
    lake.upsert("products", pl.DataFrame({"product_id": [10, 11]}), ["product_id"])
    return local_resources(data_dir), lake, clickstream_root(data_dir).parent


def test_a_requested_range_runs_the_clickstream_job_and_loads_its_views(
    world, instance, clock
) -> None:
    resources, lake, blob = world
    land(blob, "2026-11-20-10:00", text=product_view("e1", 10, "2026-11-20T10:15:00.000Z") + "\n")
    land(
        blob,
        "2026-11-20-11:00",
        text="\n".join(
            [
                product_view("e2", 11, "2026-11-20T11:05:00.000Z"),
                product_view("e3", 99, "2026-11-20T11:06:00.000Z"),  # unknown product
            ]
        )
        + "\n",
    )
    context = dg.build_sensor_context(instance=instance, resources=sensor_resources(resources))
    (request,) = clickstream_sensor(context).run_requests

    run = run_requested(request, instance, resources)

    assert run.success
    assert instance.get_materialized_partitions(keys.PRODUCT_VIEWS) == {
        "2026-11-20-10:00",
        "2026-11-20-11:00",
    }
    views = lake.read("product_views").sort("event_id")
    assert views.select("event_id", "product_id", "viewed_at", "landed_hour").to_dicts() == [
        {
            "event_id": "e1",
            "product_id": 10,
            "viewed_at": datetime(2026, 11, 20, 10, 15, tzinfo=UTC),
            "landed_hour": "2026-11-20-10:00",
        },
        {
            "event_id": "e2",
            "product_id": 11,
            "viewed_at": datetime(2026, 11, 20, 11, 5, tzinfo=UTC),
            "landed_hour": "2026-11-20-11:00",
        },
    ]


def test_views_quarantined_for_a_product_the_refreshed_catalogue_now_holds_are_loaded(
    world, instance, clock
) -> None:
    """The catalogue refreshes weekly, product views hourly: a view of a product launched
    since the last refresh is quarantined, and its hour is loaded again once the catalogue,
    refreshed, holds the product. Real instance, real runs of the hourly job."""
    resources, lake, blob = world
    land(blob, "2026-11-20-10:00", text=product_view("e1", 99, "2026-11-20T10:15:00.000Z") + "\n")
    land(blob, "2026-11-20-11:00", text=product_view("e2", 11, "2026-11-20T11:05:00.000Z") + "\n")
    land(blob, "2026-11-20-12:00", text=product_view("e3", 98, "2026-11-20T12:05:00.000Z") + "\n")

    def run(request: dg.RunRequest) -> None:
        assert run_requested(request, instance, resources).success

    def refresh_catalogue(cursor: str | None):
        instance.report_runless_asset_event(dg.AssetMaterialization(keys.PRODUCTS))
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"lake": lake}, definitions=defs()
        )
        return views_awaiting_products_sensor.evaluate_tick(context)

    sensed = dg.build_sensor_context(instance=instance, resources=sensor_resources(resources))
    (request,) = clickstream_sensor(sensed).run_requests
    run(request)
    awaiting = lake.read(QUARANTINE_TABLE).filter(pl.col("reason") == "unknown_product")
    assert sorted(awaiting["partition_key"]) == ["2026-11-20-10:00", "2026-11-20-12:00"]

    nothing_new = refresh_catalogue(None)
    assert nothing_new.run_requests == []
    assert "No recent product views await" in nothing_new.skip_message

    lake.upsert("products", pl.DataFrame({"product_id": [99]}), ["product_id"])
    launched = refresh_catalogue(nothing_new.cursor)
    (reload,) = launched.run_requests
    assert reload.partition_key == "2026-11-20-10:00"
    run(reload)
    awaiting = lake.read(QUARANTINE_TABLE).filter(pl.col("reason") == "unknown_product")
    assert awaiting["partition_key"].to_list() == ["2026-11-20-12:00"]

    # Hours apart are loaded again in one run over their span (runs at once could each miss
    # a re-sent view the other loads).
    land(blob, "2026-11-20-10:00", part=1, text=product_view("e4", 97, "2026-11-20T10:20:00Z"))
    run(clickstream_sensor(sensed).run_requests[0])
    lake.upsert("products", pl.DataFrame({"product_id": [97, 98]}), ["product_id"])
    launched = refresh_catalogue(launched.cursor)
    (reload,) = launched.run_requests
    assert span(reload) == ("2026-11-20-10:00", "2026-11-20-12:00")
    run(reload)

    views = lake.read("product_views").sort("event_id")
    assert views.select("event_id", "landed_hour").rows() == [
        ("e1", "2026-11-20-10:00"),
        ("e2", "2026-11-20-11:00"),
        ("e3", "2026-11-20-12:00"),
        ("e4", "2026-11-20-10:00"),
    ]
    assert lake.read(QUARANTINE_TABLE).filter(pl.col("reason") == "unknown_product").is_empty()
    assert refresh_catalogue(launched.cursor).run_requests == []


class UnreachableLandingZone(LocalLandingZone):
    """Files are listed, but reading one times out, as when Blob Storage throttles."""

    def read_bytes(self, container: str, path: str) -> bytes:
        raise TimeoutError(f"reading {container}/{path} timed out")


def test_a_failed_hourly_load_is_marked_for_retry_by_the_local_instance(
    tmp_path, monkeypatch
) -> None:
    """The product's own instance (its dagster.yaml) and the job's tags mark a failed hourly
    load for retry. Launching the retry is the daemon's work (Dagster's own, in `make ui`) and
    needs a run launched from the code location, which this test does not start."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))  # restored after the test
    resources = {
        **local_resources(data_dir),
        "landing_zone": UnreachableLandingZone(root=str(clickstream_root(data_dir).parent)),
    }
    land(clickstream_root(data_dir).parent, "2026-11-20-10:00")
    job = defs().resolve_job_def("clickstream_hourly")

    def failed_run_tags(instance: dg.DagsterInstance) -> dict[str, str]:
        run = job.execute_in_process(
            instance=instance,
            partition_key="2026-11-20-10:00",
            resources=resources,
            raise_on_error=False,
        )
        assert not run.success
        return instance.get_run_by_id(run.run_id).tags

    with local_instance(tmp_path / "dagster_home") as instance:
        tags = failed_run_tags(instance)
    assert tags["dagster/max_retries"] == str(LOAD_RETRIES)
    assert tags["dagster/will_retry"] == "true"

    with dg.instance_for_test() as instance:  # an instance without run retries: none marked
        assert "dagster/will_retry" not in failed_run_tags(instance)


def test_a_file_outside_a_zero_padded_hour_folder_is_not_requested(tick, landing_root) -> None:
    # the load reads `2026/11/25/07/`: a file in `2026/11/25/7/` would be requested, then
    # never read, and its hour marked done with nothing loaded
    folder = landing_root / "clickstream" / "2026" / "11" / "25" / "7"
    folder.mkdir(parents=True)
    (folder / "part-0000.jsonl").write_text("{}\n", encoding="utf-8")
    land(landing_root, "2026-11-25-08:00")

    outcome = tick()

    assert requested_spans(outcome) == [("2026-11-25-08:00", "2026-11-25-08:00")]


def tick_over(
    instance: dg.DagsterInstance, resources: dict, cursor: str | None = None
) -> SensorOutcome:
    """One evaluation of clickstream_sensor over the local resources of a `world`."""
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=sensor_resources(resources)
    )
    return clickstream_sensor(context)


def load_by_hand(hour: str, instance: dg.DagsterInstance, resources: dict) -> None:
    """Load one hour as `make demo` or a run from the UI does, without the sensor."""
    job = defs().resolve_job_def("clickstream_hourly")
    run = job.execute_in_process(instance=instance, partition_key=hour, resources=resources)
    assert run.success


def test_hours_loaded_before_the_first_tick_are_not_loaded_again(world, instance, clock) -> None:
    """As when the sensor is turned on after `make demo` loaded every landed hour."""
    resources, _, blob = world
    hours = ["2026-11-20-10:00", "2026-11-20-11:00", "2026-11-20-12:00"]
    for n, hour in enumerate(hours):
        land(blob, hour, text=product_view(f"e{n}", 10, f"{hour[:10]}T{hour[11:13]}:05:00Z") + "\n")
    for hour in hours[:2]:
        load_by_hand(hour, instance, resources)
    land(blob, hours[1], part=1, text=product_view("late", 11, "2026-11-20T11:30:00Z") + "\n")
    first = tick_over(instance, resources)

    # 10:00 was loaded from the file it holds; 11:00 has a file that landed after its load,
    # and 12:00 was never loaded.
    assert requested_spans(first) == [("2026-11-20-11:00", "2026-11-20-12:00")]
    assert isinstance(tick_over(instance, resources, first.cursor), dg.SkipReason)


def test_a_first_tick_after_every_hour_was_loaded_keeps_them_in_its_cursor(
    world, instance, clock
) -> None:
    resources, _, blob = world
    hour = "2026-11-20-10:00"
    land(blob, hour, text=product_view("e1", 10, "2026-11-20T10:05:00Z") + "\n")
    load_by_hand(hour, instance, resources)

    first = tick_over(instance, resources)

    assert isinstance(first, dg.SensorResult) and not first.run_requests
    assert "No new clickstream files in 1 landed hours" in first.skip_reason.skip_message
    assert hour in json.loads(first.cursor)["hours"]
    land(blob, hour, part=1, text=product_view("e2", 10, "2026-11-20T10:45:00Z") + "\n")
    assert requested_spans(tick_over(instance, resources, first.cursor)) == [(hour, hour)]


def test_a_file_moved_into_a_loaded_hour_with_an_older_time_is_loaded(
    world, instance, clock
) -> None:
    """A finished upload renamed into place keeps the time it was written, before the load."""
    resources, lake, blob = world
    hour = "2026-11-20-10:00"
    land(blob, hour, text=product_view("e1", 10, "2026-11-20T10:05:00Z") + "\n")
    folder = blob / "clickstream" / "2026" / "11" / "20" / "10"
    uploading = folder / "part-0001.jsonl.uploading"
    uploading.write_text(product_view("e2", 11, "2026-11-20T10:40:00Z") + "\n")
    written = uploading.stat().st_mtime - 5
    os.utime(uploading, (written, written))
    load_by_hand(hour, instance, resources)
    uploading.rename(folder / "part-0001.jsonl")

    (request,) = tick_over(instance, resources).run_requests
    assert run_requested(request, instance, resources).success

    assert sorted(lake.read("product_views")["event_id"]) == ["e1", "e2"]

"""Product views: every bad line quarantined with its reason, hours reloaded idempotently."""

import logging
from datetime import datetime

import polars as pl
import pytest

from contoso_recs.demo_data import layout
from contoso_recs.lake.quarantine import QUARANTINE_TABLE
from contoso_recs.resources.landing import LocalLandingZone
from contoso_recs.sources import clickstream
from contoso_recs.sources.clickstream import hour_fingerprints, read_hour, read_landed_file
from contoso_recs_tests.conftest import load_hour, materialization, run_job, view_line

HOUR = datetime(2026, 11, 20, 10)
PARTITION = "2026-11-20-10:00"


@pytest.fixture
def catalogue(lake):
    lake.upsert("products", pl.DataFrame({"product_id": [10, 11]}), ["product_id"])


def bad_hour(sources) -> None:
    sources.clickstream_file(
        HOUR,
        "part-0000.jsonl",
        [
            view_line("e1"),
            view_line("e2", product_id=11, customer_id=None),
            '{"event_id": "e3", "product_id": 10, "viewed_at": ',
            view_line("e4", dwell_seconds="abc"),
            view_line("e1"),
            view_line("e5", product_id=999),
            view_line("e6", customer_id=None, session_id=None),
            view_line("e7", viewed_at="2026-11-20T13:00:00.000Z"),
            view_line("e8", dwell_seconds=-1),
            view_line("e9", product_id="ten"),
            view_line("e10", event_type="add_to_cart"),
            "[1, 2, 3]",
        ],
    )
    sources.clickstream_file(HOUR, "part-0001.jsonl", [view_line("e11", customer_id=2)])


def test_each_kind_of_bad_line_is_quarantined_and_counted(
    sources, catalogue, data_dir, instance, lake
):
    bad_hour(sources)

    result = load_hour(data_dir, instance, PARTITION)

    assert result.success
    metadata = materialization(result, "lake", "product_views")
    assert (metadata["rows_read"], metadata["rows_loaded"], metadata["rows_quarantined"]) == (
        13,
        3,
        10,
    )
    assert metadata["quarantined_by_reason"] == {
        "duplicate": 1,
        "invalid_dwell_seconds": 1,
        "invalid_product_id": 1,
        "malformed_json": 2,
        "missing_customer_and_session": 1,
        "negative_dwell_seconds": 1,
        "unexpected_event_type": 1,
        "unknown_product": 1,
        "viewed_at_out_of_range": 1,
    }
    views = lake.read("product_views").sort("event_id")
    assert views["event_id"].to_list() == ["e1", "e11", "e2"]
    assert views["landed_hour"].unique().to_list() == [PARTITION]
    quarantine = lake.read(QUARANTINE_TABLE).filter(pl.col("reason") == "malformed_json")
    assert sorted(quarantine["source_ref"]) == [
        "2026/11/20/10/part-0000.jsonl:12",
        "2026/11/20/10/part-0000.jsonl:3",
    ]
    # the quarantine in the Catalog: counts per table and reason, never the raw text
    catalogue_entry = materialization(result, "lake", "quarantine")
    assert catalogue_entry["dagster/row_count"] == 10
    assert catalogue_entry["rows_by_table_and_reason"] == {
        f"product_views/{reason}": count
        for reason, count in metadata["quarantined_by_reason"].items()
    }
    assert "s-1" not in str(catalogue_entry) and "ios" not in str(catalogue_entry)


def test_a_truncated_last_line_is_quarantined_and_the_rest_of_the_file_loaded():
    content = (view_line("e1") + "\n" + view_line("e2")[:25]).encode()

    rows, rejects = read_landed_file("2026/11/20/10/part-0000.jsonl", content)

    assert rows["event_id"].to_list() == ["e1"]
    assert rejects.select("source_ref", "reason").rows() == [
        ("2026/11/20/10/part-0000.jsonl:2", "malformed_json")
    ]


def test_an_unknown_extra_field_does_not_stop_a_view_from_loading():
    content = (view_line("e1", campaign="winter") + "\n").encode()

    rows, rejects = read_landed_file("f.jsonl", content)

    assert rows["event_id"].to_list() == ["e1"]
    assert rejects.is_empty()


def test_reloading_an_hour_gives_the_same_tables(sources, catalogue, data_dir, instance, lake):
    bad_hour(sources)
    load_hour(data_dir, instance, PARTITION)
    views = lake.read("product_views").sort("event_id")
    quarantine = lake.read(QUARANTINE_TABLE).sort("source_ref")

    load_hour(data_dir, instance, PARTITION)

    assert lake.read("product_views").sort("event_id").equals(views)
    assert lake.read(QUARANTINE_TABLE).sort("source_ref").equals(quarantine)


def test_a_late_file_for_an_hour_is_added_when_the_hour_is_reloaded(
    sources, catalogue, data_dir, instance, lake
):
    sources.clickstream_file(HOUR, "part-0000.jsonl", [view_line("e1")])
    load_hour(data_dir, instance, PARTITION)
    sources.clickstream_file(HOUR, "part-0007.jsonl", [view_line("late-1"), view_line("late-2")])

    result = load_hour(data_dir, instance, PARTITION)

    assert materialization(result, "lake", "product_views")["rows_loaded"] == 3
    assert lake.read("product_views").height == 3


def test_other_hours_are_untouched_when_one_hour_is_reloaded(
    sources, catalogue, data_dir, instance, lake
):
    sources.clickstream_file(HOUR, "part-0000.jsonl", [view_line("e1")])
    next_hour = datetime(2026, 11, 20, 11)
    sources.clickstream_file(
        next_hour, "part-0000.jsonl", [view_line("e2", viewed_at="2026-11-20T11:01:00.000Z")]
    )
    load_hour(data_dir, instance, PARTITION)
    load_hour(data_dir, instance, "2026-11-20-11:00")

    load_hour(data_dir, instance, PARTITION)

    assert sorted(lake.read("product_views")["event_id"]) == ["e1", "e2"]


def test_an_hour_without_files_is_an_empty_partition_that_says_so(
    catalogue, data_dir, instance, lake
):
    result = load_hour(data_dir, instance, PARTITION)

    metadata = materialization(result, "lake", "product_views")
    assert (metadata["rows_read"], metadata["dagster/row_count"]) == (0, 0)
    assert "No clickstream files" in metadata["note"]


def test_a_file_still_being_uploaded_is_left_for_a_later_run(
    sources, catalogue, data_dir, instance, lake
):
    sources.clickstream_file(HOUR, "part-0000.jsonl", [view_line("e1")])
    sources.clickstream_file(HOUR, "part-0001.jsonl.tmp", [view_line("e2")])

    result = load_hour(data_dir, instance, PARTITION)

    assert materialization(result, "lake", "product_views")["files_read"] == 1
    assert lake.read("product_views")["event_id"].to_list() == ["e1"]


@pytest.mark.parametrize("as_one_range, chunk_hours", [(False, 24), (True, 24), (True, 1)])
def test_a_view_sent_again_in_a_later_hour_is_loaded_once(
    as_one_range, chunk_hours, sources, catalogue, data_dir, instance, lake, monkeypatch
):
    """An app that was not sure its upload went through sends the view again with the next.
    Loaded hour by hour, as one range, and as one range read an hour at a time (chunks)."""
    monkeypatch.setattr(clickstream, "CHUNK_HOURS", chunk_hours)
    next_hour = datetime(2026, 11, 20, 11)
    sources.clickstream_file(HOUR, "part-0000.jsonl", [view_line("e1"), view_line("e2")])
    sources.clickstream_file(
        next_hour,
        "part-0000.jsonl",
        [view_line("e1"), view_line("e3", viewed_at="2026-11-20T11:01:00.000Z")],
    )
    if as_one_range:
        result = load_range(data_dir, instance, PARTITION, "2026-11-20-11:00")
        assert result.success
        rejects = lake.read(QUARANTINE_TABLE)
        assert rejects.select("partition_key", "reason").rows() == [
            ("2026-11-20-11:00", "duplicate")
        ]
    else:
        load_hour(data_dir, instance, PARTITION)
        later = materialization(
            load_hour(data_dir, instance, "2026-11-20-11:00"), "lake", "product_views"
        )
        assert (later["rows_read"], later["rows_loaded"], later["quarantined_by_reason"]) == (
            2,
            1,
            {"duplicate": 1},
        )
    expected = [("e1", PARTITION), ("e2", PARTITION), ("e3", "2026-11-20-11:00")]
    views = lake.read("product_views").sort("event_id")
    assert views.select("event_id", "landed_hour").rows() == expected

    load_hour(data_dir, instance, PARTITION)
    load_hour(data_dir, instance, "2026-11-20-11:00")

    views = lake.read("product_views").sort("event_id")
    assert views.select("event_id", "landed_hour").rows() == expected
    rejects = lake.read(QUARANTINE_TABLE).filter(pl.col("target_table") == "product_views")
    assert rejects.select("partition_key", "reason").rows() == [("2026-11-20-11:00", "duplicate")]


def load_range(data_dir, instance, first: str, last: str):
    """One run of `clickstream_hourly` over the hours from `first` to `last` (partition keys)."""
    return run_job(
        "clickstream_hourly",
        data_dir,
        instance,
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
    )


def recorded_reads(monkeypatch, after_first_read=None) -> list[str]:
    """The hours the load reads, in order; `after_first_read(hour)` runs once an hour has been
    read for the first time."""
    reads: list[str] = []
    real = clickstream.read_hour

    def read_hour(landing, hour, again=None):
        landed = real(landing, hour, again)
        key = hour.strftime(clickstream.PARTITION_FORMAT)
        if key not in reads and after_first_read is not None:
            after_first_read(hour)
        reads.append(key)
        return landed

    monkeypatch.setattr(clickstream, "read_hour", read_hour)
    return reads


def test_a_run_reads_an_hour_again_only_when_it_holds_a_view_sent_again(
    sources, catalogue, data_dir, instance, lake, monkeypatch
):
    """The raw text of a run is held one hour at a time: the lookup of re-sent views comes after
    the hours are conformed, and only an hour holding one is read a second time."""
    sources.clickstream_file(HOUR, "part-0000.jsonl", [view_line("e1")])
    load_hour(data_dir, instance, PARTITION)
    sources.clickstream_file(datetime(2026, 11, 20, 11), "part-0000.jsonl", [view_line("e3")])
    sources.clickstream_file(
        datetime(2026, 11, 20, 12), "part-0000.jsonl", [view_line("e1"), view_line("e4")]
    )
    reads = recorded_reads(monkeypatch)

    result = load_range(data_dir, instance, "2026-11-20-11:00", "2026-11-20-12:00")

    assert result.success
    assert reads == ["2026-11-20-11:00", "2026-11-20-12:00", "2026-11-20-12:00"]
    views = lake.read("product_views").sort("event_id")
    assert views.select("event_id", "landed_hour").rows() == [
        ("e1", PARTITION),
        ("e3", "2026-11-20-11:00"),
        ("e4", "2026-11-20-12:00"),
    ]
    rejects = lake.read(QUARANTINE_TABLE).filter(pl.col("target_table") == "product_views")
    assert rejects.select("partition_key", "reason").rows() == [("2026-11-20-12:00", "duplicate")]


def test_a_file_landing_between_the_two_reads_of_an_hour_is_left_for_the_next_run(
    sources, catalogue, data_dir, instance, lake, monkeypatch
):
    """The second read of an hour reads the files of the first, so every view of a run is
    judged on one listing of each hour; the hour is recorded as loaded from that listing, so
    the clickstream sensor sees the new file and loads the hour again."""
    later = datetime(2026, 11, 20, 11)
    sources.clickstream_file(HOUR, "part-0000.jsonl", [view_line("e0"), view_line("e1")])
    load_hour(data_dir, instance, PARTITION)
    sources.clickstream_file(later, "part-0000.jsonl", [view_line("e1")])

    def upload_lands(hour):
        if hour.strftime(clickstream.PARTITION_FORMAT) == "2026-11-20-11:00":
            sources.clickstream_file(later, "part-0001.jsonl", [view_line("e0"), view_line("e5")])

    reads = recorded_reads(monkeypatch, after_first_read=upload_lands)

    first = materialization(
        load_hour(data_dir, instance, "2026-11-20-11:00"), "lake", "product_views"
    )

    assert reads == ["2026-11-20-11:00", "2026-11-20-11:00"]
    assert (first["files_read"], first["rows_read"], first["rows_loaded"]) == (1, 1, 0)
    recorded = lake.read(clickstream.LOADED_FILES_TABLE).filter(
        pl.col("landed_hour") == "2026-11-20-11:00"
    )
    zone = LocalLandingZone(root=str(layout.clickstream_root(data_dir).parent))
    landed = hour_fingerprints(zone.list_files("clickstream"))
    assert recorded["files_fingerprint"].item() != landed["2026-11-20-11:00"]

    again = materialization(
        load_hour(data_dir, instance, "2026-11-20-11:00"), "lake", "product_views"
    )

    assert (again["rows_read"], again["quarantined_by_reason"]) == (3, {"duplicate": 2})
    views = lake.read("product_views").sort("event_id")
    assert views.select("event_id", "landed_hour").rows() == [
        ("e0", PARTITION),
        ("e1", PARTITION),
        ("e5", "2026-11-20-11:00"),
    ]


@pytest.mark.parametrize("change", ["removed", "rewritten"])
def test_a_file_changed_between_the_two_reads_of_an_hour_fails_the_run_and_writes_nothing(
    change, sources, catalogue, data_dir, instance, lake, monkeypatch
):
    """Hour 11 is read twice (it holds a view re-sent from hour 10); its second file goes away
    or is rewritten in between. Judged on either listing alone, e5 would be loaded in hour 11
    or hour 12; judged on both it would be loaded nowhere. The run writes nothing instead."""
    sources.clickstream_file(HOUR, "part-0000.jsonl", [view_line("e0")])
    load_hour(data_dir, instance, PARTITION)
    h11, h12 = datetime(2026, 11, 20, 11), datetime(2026, 11, 20, 12)
    sources.clickstream_file(h11, "part-0000.jsonl", [view_line("e0")])
    second = sources.clickstream_file(h11, "part-0001.jsonl", [view_line("e5")])
    sources.clickstream_file(h12, "part-0000.jsonl", [view_line("e5")])
    before = lake.read("product_views")

    def file_changes(hour):
        if hour.strftime(clickstream.PARTITION_FORMAT) != "2026-11-20-11:00":
            return
        if change == "removed":
            second.unlink()
        else:
            second.write_text(view_line("e6") + "\n" + view_line("e7") + "\n")

    recorded_reads(monkeypatch, after_first_read=file_changes)

    result = load_range(data_dir, instance, "2026-11-20-11:00", "2026-11-20-12:00")

    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.user_failure_data.description
    assert "part-0001.jsonl changed or went away while this run read the hour" in message
    assert lake.read("product_views").equals(before)


def run_log(instance, result, level: int) -> list[str]:
    return [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if entry.level == level and "product views" in entry.user_message
    ]


def test_a_long_run_logs_a_line_a_day_and_its_hours_at_debug_level(
    sources, catalogue, data_dir, instance, monkeypatch
):
    """An on-call engineer reads one line per hour of an hourly run, and one per day of a
    backfill (`make demo` loads four weeks), with every hour's line still kept at debug."""
    monkeypatch.setattr(clickstream, "CHUNK_HOURS", 2)
    for hour in range(10, 13):
        moment = datetime(2026, 11, 20, hour)
        sources.clickstream_file(
            moment,
            "part-0000.jsonl",
            [view_line(f"e{hour}", viewed_at=f"{moment:%Y-%m-%dT%H}:05:00Z")],
        )
    single = load_hour(data_dir, instance, PARTITION)
    span = load_range(data_dir, instance, PARTITION, "2026-11-20-12:00")

    assert single.success and span.success
    assert run_log(instance, single, logging.INFO)[0].startswith(
        "hour 2026-11-20-10:00: 1 files, product views read 1, loaded 1"
    )
    assert run_log(instance, span, logging.INFO)[:2] == [
        "hours 2026-11-20-10:00 to 2026-11-20-11:00: 2 files, product views read 2, loaded 2, "
        "quarantined 0",
        "hours 2026-11-20-12:00 to 2026-11-20-12:00: 1 files, product views read 1, loaded 1, "
        "quarantined 0",
    ]
    hours = [m for m in run_log(instance, span, logging.DEBUG) if m.startswith("hour ")]
    assert len(hours) == 3


class PrefixLandingZone(LocalLandingZone):
    """Lists by name prefix, as Blob Storage does (`…/10` also names `…/10-old/…`)."""

    def list_files(self, container: str, prefix: str = "") -> list:
        return [f for f in super().list_files(container) if f.path.startswith(prefix)]


def test_an_hour_reads_only_its_own_folder_when_the_store_lists_by_name_prefix(tmp_path):
    root = tmp_path / "blob"
    for folder, event in (("10", "e1"), ("10-old", "stale"), ("100", "odd")):
        path = root / "clickstream" / "2026" / "11" / "20" / folder / "part-0000.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text(view_line(event) + "\n")
    zone = PrefixLandingZone(root=str(root))

    landed = read_hour(zone, HOUR)

    assert landed.files == 1 and sorted(landed.raw["event_id"]) == ["e1"]
    assert landed.fingerprint == hour_fingerprints(zone.list_files("clickstream"))[PARTITION]

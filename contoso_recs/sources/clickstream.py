"""Product views from the hourly clickstream files into the lake, one hour per partition."""

import hashlib
import io
import warnings
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
from dagster import get_dagster_logger

from contoso_recs.lake import keys
from contoso_recs.lake.conform import (
    QUARANTINE_SCHEMA,
    Column,
    Conformed,
    Contract,
    Rule,
    as_float,
    as_int,
    as_timestamp,
    conform,
)
from contoso_recs.lake.quarantine import report_quarantine, write_quarantine
from contoso_recs.resources.lake import Lake
from contoso_recs.resources.landing import (
    CLICKSTREAM_CONTAINER,
    LandedFile,
    LandingZone,
    clickstream_hour_prefix,
)

HOURLY_PARTITIONS = dg.HourlyPartitionsDefinition(start_date="2024-12-01-00:00")
PARTITION_FORMAT = "%Y-%m-%d-%H:%M"
EVENT_TIMESTAMP = "%Y-%m-%dT%H:%M:%S%.fZ"
RAW_FIELDS = [
    "event_id",
    "event_type",
    "customer_id",
    "session_id",
    "product_id",
    "viewed_at",
    "dwell_seconds",
    "device",
]
CLICKSTREAM_SUFFIX = ".jsonl"
# Each landed hour loaded, the fingerprint of the files it was loaded from, and when: how the
# clickstream sensor tells an hour loaded without it (`make demo`, a run from the UI) from one
# still to load.
LOADED_FILES_TABLE = "product_views_files"
NO_FILES = ""
UTF8_BOM = b"\xef\xbb\xbf"
RAW_SCHEMA = dict.fromkeys(RAW_FIELDS, pl.String)
# A view may reach the landing zone late (an app that was offline), never from the future.
CLOCK_SKEW = timedelta(minutes=5)
OLDEST_LATE_VIEW = timedelta(days=7)
NO_EVENT_IDS = pl.Series("event_id", [], dtype=pl.String)
# A long run (a backfill, or the sensor catching up) looks up re-sent views once per this many
# hours (`conform_chunk`); raw text is held one hour at a time.
CHUNK_HOURS = 24


def product_views_contract(
    hour: datetime, known_product_ids: pl.Series, loaded_elsewhere: pl.Series | None = None
) -> Contract:
    """`loaded_elsewhere`: event ids already loaded in another hour (an app that sent a view
    again with a later upload); such a copy is a `duplicate`."""
    viewed_at = pl.col("viewed_at")
    loaded_elsewhere = NO_EVENT_IDS if loaded_elsewhere is None else loaded_elsewhere
    return Contract(
        columns=[
            Column("event_id", required=True),
            Column("event_type", keep=False),
            Column("customer_id", as_int),
            Column("session_id"),
            Column("product_id", as_int, required=True),
            Column("viewed_at", as_timestamp(EVENT_TIMESTAMP), required=True),
            Column("dwell_seconds", as_float),
            Column("device"),
        ],
        rules=[
            Rule(
                "missing_customer_and_session",
                pl.col("customer_id").is_null() & pl.col("session_id").is_null(),
            ),
            Rule("unknown_product", ~pl.col("product_id").is_in(known_product_ids.implode())),
            Rule(
                "unexpected_event_type",
                pl.col("event_type").is_not_null() & (pl.col("event_type") != "product_view"),
            ),
            Rule("negative_dwell_seconds", pl.col("dwell_seconds") < 0),
            Rule(
                "viewed_at_out_of_range",
                (viewed_at >= hour + timedelta(hours=1) + CLOCK_SKEW)
                | (viewed_at < hour - OLDEST_LATE_VIEW),
            ),
            Rule("duplicate", pl.col("event_id").is_in(loaded_elsewhere.implode())),
        ],
        unique_key=["event_id"],
    )


def read_landed_file(path: str, content: bytes) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Parse one JSON-lines file into raw text rows and rejected lines.

    The whole file is parsed at once; only a file with a malformed or truncated line is parsed
    line by line to find which lines to reject.
    """
    content = content.removeprefix(UTF8_BOM)
    try:
        rows = pl.read_ndjson(io.BytesIO(content), schema=RAW_SCHEMA)
        # Row i is line i only when no line was blank; otherwise number the lines one by one.
        if rows.height == content.rstrip(b"\r\n").count(b"\n") + 1:
            return _with_line_numbers(rows, path, list(range(1, rows.height + 1))), _no_rejects()
    except pl.exceptions.PolarsError:
        pass
    return _read_line_by_line(path, content)


def _read_line_by_line(path: str, content: bytes) -> tuple[pl.DataFrame, pl.DataFrame]:
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:  # load what can be read, as the rest of the lake does
        content = content.decode("utf-8", errors="replace").encode()
    lines = [
        (number, line) for number, line in enumerate(content.split(b"\n"), start=1) if line.strip()
    ]
    # A line cut short or mangled almost never still starts with `{` and ends with `}`: set
    # those aside first, so the rest usually parses in one go.
    shaped: list[tuple[int, bytes]] = []
    suspicious: list[tuple[int, bytes]] = []
    for number, line in lines:
        (shaped if _looks_like_a_record(line) else suspicious).append((number, line))
    parsed, bad = _parse_isolating_bad_lines(shaped)
    for row in suspicious:
        more, rejected = _parse_isolating_bad_lines([row])
        parsed += more
        bad += rejected

    bad.sort()
    rejects = pl.DataFrame(
        {
            "source_ref": [f"{path}:{number}" for number, _ in bad],
            "reason": ["malformed_json"] * len(bad),
            "raw": [line.decode() for _, line in bad],
        },
        schema=QUARANTINE_SCHEMA,
    )
    if not parsed:
        return _with_line_numbers(pl.DataFrame(schema=RAW_SCHEMA), path, []), rejects
    rows = pl.concat([frame for frame, _ in parsed])
    numbers = [number for _, chunk in parsed for number in chunk]
    return _with_line_numbers(rows, path, numbers).sort("_line"), rejects


def _looks_like_a_record(line: bytes) -> bool:
    stripped = line.strip()
    return stripped.startswith(b"{") and stripped.endswith(b"}")


def _parse_isolating_bad_lines(
    numbered: list[tuple[int, bytes]],
) -> tuple[list[tuple[pl.DataFrame, list[int]]], list[tuple[int, bytes]]]:
    """Parse lines in halves until every unparseable line stands alone.

    Malformed lines are rare, so this costs about two parses of the file instead of a
    Python-level parse of every line.
    """
    if not numbered:
        return [], []
    try:
        payload = b"\n".join([line for _, line in numbered])
        rows = pl.read_ndjson(io.BytesIO(payload), schema=RAW_SCHEMA)
        if rows.height == len(numbered):
            return [(rows, [number for number, _ in numbered])], []
    except pl.exceptions.PolarsError:
        pass
    if len(numbered) == 1:
        return [], numbered
    middle = len(numbered) // 2
    left_frames, left_bad = _parse_isolating_bad_lines(numbered[:middle])
    right_frames, right_bad = _parse_isolating_bad_lines(numbered[middle:])
    return left_frames + right_frames, left_bad + right_bad


def _with_line_numbers(rows: pl.DataFrame, path: str, numbers: list[int]) -> pl.DataFrame:
    return rows.with_columns(_file=pl.lit(path), _line=pl.Series(numbers, dtype=pl.Int64))


def _no_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


@dataclass(frozen=True)
class HourFiles:
    """The files of one hour as listed: those read, and the fingerprint the clickstream sensor
    computes for all of them (uploads still in progress included)."""

    landed: tuple[LandedFile, ...]
    fingerprint: str


@dataclass(frozen=True)
class ListedHour:
    """One hour and the files listed for it."""

    hour: datetime
    listing: HourFiles

    @property
    def key(self) -> str:
        return self.hour.strftime(PARTITION_FORMAT)

    @property
    def files(self) -> int:
        return len(self.listing.landed)

    @property
    def fingerprint(self) -> str:
        return self.listing.fingerprint


@dataclass(frozen=True)
class LandedHour(ListedHour):
    """The raw rows of one hour's files and the lines rejected while reading them."""

    raw: pl.DataFrame
    rejects: pl.DataFrame

    @property
    def event_ids(self) -> pl.Series:
        """Every event id in the hour's raw rows."""
        return self.raw["event_id"].str.strip_chars().drop_nulls().unique()


def hour_of(path: str) -> str | None:
    """The hour (partition key) whose folder holds a landed file, or None when the file is not
    in an hour's folder exactly as the load reads it (`YYYY/MM/DD/HH/`, zero-padded)."""
    parts = path.split("/")
    if len(parts) < 5:
        return None
    folder = "/".join(parts[:4])
    try:
        hour = datetime.strptime(folder, "%Y/%m/%d/%H")
    except ValueError:
        return None
    return hour.strftime(PARTITION_FORMAT) if clickstream_hour_prefix(hour) == folder else None


def hour_fingerprints(files: list[LandedFile]) -> dict[str, str]:
    """One fingerprint per landed hour (partition key), changing whenever a file of it does
    (uploads still in progress included)."""
    by_hour: dict[str, list[str]] = defaultdict(list)
    for file in files:
        if (hour := hour_of(file.path)) is not None:
            by_hour[hour].append(file.fingerprint)
    return {
        key: hashlib.sha1("\n".join(sorted(prints)).encode()).hexdigest()[:16]
        for key, prints in by_hour.items()
    }


def _in_hour_folder(landing: LandingZone, hour: datetime) -> list[LandedFile]:
    key = hour.strftime(PARTITION_FORMAT)
    # Blob lists by name prefix: `…/10` also names `…/10-old/`; keep the hour's own folder
    return [
        file
        for file in landing.list_files(CLICKSTREAM_CONTAINER, clickstream_hour_prefix(hour))
        if hour_of(file.path) == key
    ]


def list_hour(landing: LandingZone, hour: datetime) -> HourFiles:
    """The files of one hour to read: those ending in CLICKSTREAM_SUFFIX in its own folder."""
    listed = _in_hour_folder(landing, hour)
    files = [file for file in listed if file.path.endswith(CLICKSTREAM_SUFFIX)]
    if len(files) < len(listed):
        skipped = ", ".join(file.path for file in listed if file not in files)
        get_dagster_logger().warning(
            f"hour {clickstream_hour_prefix(hour)}: left out files not ending in "
            f"{CLICKSTREAM_SUFFIX} (uploads in progress or stray files): {skipped}"
        )
    key = hour.strftime(PARTITION_FORMAT)
    return HourFiles(tuple(files), hour_fingerprints(listed).get(key, NO_FILES))


def read_hour(landing: LandingZone, hour: datetime, again: HourFiles | None = None) -> LandedHour:
    """Read every file of one hour into raw text rows.

    `again`: the files an earlier read of this hour in the same run listed. Exactly those are
    read, so the run judges every view on one listing of each hour; a file that landed since is
    left to the next run (the hour is recorded with the earlier fingerprint, so the clickstream
    sensor sees it as changed), and one that changed or went away is an error.
    """
    if again is None:
        listing = list_hour(landing, hour)
    else:
        now = set(_in_hour_folder(landing, hour))
        if changed := [file.path for file in again.landed if file not in now]:
            raise dg.Failure(
                description=f"hour {clickstream_hour_prefix(hour)}: {', '.join(changed)} "
                "changed or went away while this run read the hour, so nothing was written; "
                "run the hours again (a run retry of `clickstream_hourly` does)."
            )
        listing = again
    raw_frames, rejects = [], [_no_rejects()]
    for landed in listing.landed:
        rows, bad = read_landed_file(
            landed.path, landing.read_bytes(CLICKSTREAM_CONTAINER, landed.path)
        )
        raw_frames.append(rows)
        rejects.append(bad)
    raw = (
        pl.concat(raw_frames)
        if raw_frames
        else _with_line_numbers(pl.DataFrame(schema=RAW_SCHEMA), "", [])
    )
    return LandedHour(hour, listing, raw, pl.concat(rejects))


def conform_hour(
    landed: LandedHour, known_product_ids: pl.Series, loaded_elsewhere: pl.Series | None = None
) -> Conformed:
    """Conform one hour's product views; `loaded_elsewhere`: event ids loaded in other hours."""
    ref = pl.format("{}:{}", pl.col("_file"), pl.col("_line"))
    return conform(
        landed.raw,
        product_views_contract(landed.hour, known_product_ids, loaded_elsewhere),
        ref,
        quarantined_before=landed.rejects,
    )


def events_in_other_hours(lake: Lake, event_ids: pl.Series, first: str, last: str) -> pl.Series:
    """Which of `event_ids` the lake holds in hours before `first` or after `last` (partition
    keys), as near as a re-sent copy can land: both copies land within OLDEST_LATE_VIEW (and
    the clock skew) of the view, so only the days that far around the range are read."""
    if event_ids.is_empty() or not lake.exists("product_views"):
        return NO_EVENT_IDS
    reach = OLDEST_LATE_VIEW + CLOCK_SKEW + timedelta(days=1)
    start = datetime.strptime(first, PARTITION_FORMAT) - reach
    end = datetime.strptime(last, PARTITION_FORMAT) + reach
    found = (
        lake.scan("product_views")
        .filter(
            pl.col("landed_date").is_between(pl.lit(f"{start:%Y-%m-%d}"), pl.lit(f"{end:%Y-%m-%d}"))
            & ((pl.col("landed_hour") < pl.lit(first)) | (pl.col("landed_hour") > pl.lit(last)))
            & pl.col("event_id").is_in(event_ids.implode())
        )
        .select("event_id")
        .unique()
        .collect()
    )
    return found["event_id"]


@dataclass(frozen=True)
class ConformedHour(ListedHour):
    """One hour as loaded: its conformed views (the hour's raw rows are not kept)."""

    conformed: Conformed

    @property
    def loaded_ids(self) -> pl.Series:
        """The event ids this hour loads (not those it quarantined)."""
        return self.conformed.loaded["event_id"]


def _among(ids: pl.Series, id_columns: list[pl.Series]) -> list[pl.Series]:
    """Each of `id_columns` cut down to the ids also in `ids`."""
    return [column.filter(column.is_in(ids.implode())) for column in id_columns]


def conform_chunk(
    landing: LandingZone,
    lake: Lake,
    hours: list[datetime],
    known_product_ids: pl.Series,
    earlier: list[pl.Series],
    run_keys: tuple[str, str],
) -> list[ConformedHour]:
    """Read and conform some of a run's hours, holding one hour's raw rows at a time.

    A view already loaded elsewhere is a `duplicate`: in an earlier one of `hours` (checked as
    each hour is conformed), in an earlier part of the run (`earlier`: the event ids loaded
    there) or in the lake outside the run's partition keys (`run_keys`: its first and last).
    The last two are looked up once, for the views the hours load; an hour loading a view found
    there (a rare re-sent view) is read again from the files of its first read and conformed
    against what was found and against every other hour's loaded views.
    """
    done: list[ConformedHour] = []
    for hour in hours:
        done.append(
            _conformed_hour(landing, hour, known_product_ids, [one.loaded_ids for one in done])
        )
    loaded = pl.concat([NO_EVENT_IDS, *(one.loaded_ids for one in done)])
    resent = pl.concat([events_in_other_hours(lake, loaded, *run_keys), *_among(loaded, earlier)])
    for i, first_read in enumerate(done):
        if first_read.loaded_ids.is_in(resent.implode()).any():
            others = [other.loaded_ids for j, other in enumerate(done) if j != i]
            done[i] = _conformed_hour(
                landing, first_read.hour, known_product_ids, others, resent, first_read.listing
            )
    return done


def _conformed_hour(
    landing: LandingZone,
    hour: datetime,
    known_product_ids: pl.Series,
    other_hours: list[pl.Series],
    resent: pl.Series = NO_EVENT_IDS,
    again: HourFiles | None = None,
) -> ConformedHour:
    """Read one hour and conform it, a view loaded in `other_hours` (their loaded event ids) or
    in `resent` being a duplicate; the raw rows go out of scope on return."""
    landed = read_hour(landing, hour, again)
    found = pl.concat([resent, *_among(landed.event_ids, other_hours)])
    conformed = conform_hour(landed, known_product_ids, found)
    return ConformedHour(landed.hour, landed.listing, conformed)


def hours_in(window: dg.TimeWindow) -> list[datetime]:
    hours, hour = [], window.start
    while hour < window.end:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


# A range of hours loads as one run and one Delta commit (BackfillPolicy.single_run). Dagster
# marks the `backfill_policy` parameter as beta and warns on every import; the behaviour relied
# on is covered by the tests, so that one warning is silenced here.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*backfill_policy", category=dg.BetaWarning)
    _product_views_asset = dg.asset(
        key=keys.PRODUCT_VIEWS,
        deps=[keys.CLICKSTREAM_SOURCE, keys.PRODUCTS],
        partitions_def=HOURLY_PARTITIONS,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=keys.LAKE_GROUP,
        kinds={"delta", "polars"},
        pool="clickstream",
    )


@_product_views_asset
def product_views(
    context: dg.AssetExecutionContext, landing_zone: LandingZone, lake: Lake
) -> dg.MaterializeResult:
    """Product views in the mobile app and web shop, with dwell time, one partition per hour."""
    known_products = (
        lake.scan("products").select("product_id").collect().to_series()
        if lake.exists("products")
        else pl.Series("product_id", [], dtype=pl.Int64)
    )
    first, last = context.partition_key_range.start, context.partition_key_range.end
    loaded, rejected, files, silent_hours = [], [], 0, 0
    hours_read: list[tuple[str, str, int]] = []  # (hour, fingerprint of its files, files)
    all_hours = hours_in(context.partition_time_window)
    for start in range(0, len(all_hours), CHUNK_HOURS):
        chunk = conform_chunk(
            landing_zone,
            lake,
            all_hours[start : start + CHUNK_HOURS],
            known_products,
            [frame["event_id"] for frame in loaded],
            (first, last),
        )
        chunk_start = len(loaded)
        for one in chunk:
            files += one.files
            hours_read.append((one.key, one.fingerprint, one.files))
            silent_hours += one.files == 0
            loaded.append(
                one.conformed.loaded.with_columns(
                    landed_hour=pl.lit(one.key), landed_date=pl.lit(one.hour.strftime("%Y-%m-%d"))
                )
            )
            rejected.append(
                one.conformed.all_quarantined.with_columns(partition_key=pl.lit(one.key))
            )
            # a long run (a backfill, `make demo`) logs a line per CHUNK_HOURS hours read, and
            # each hour at debug level
            log_hour = context.log.info if len(all_hours) <= CHUNK_HOURS else context.log.debug
            log_hour(f"hour {one.key}: {one.files} files, product views {one.conformed.summary()}")
        if len(all_hours) > CHUNK_HOURS:
            day = Conformed(
                loaded=pl.concat(loaded[chunk_start:]),
                quarantined=pl.concat(rejected[chunk_start:]).drop("partition_key"),
            )
            context.log.info(
                f"hours {chunk[0].key} to {chunk[-1].key}: {sum(one.files for one in chunk)} "
                f"files, product views {day.summary()}"
            )

    views, rejects = pl.concat(loaded), pl.concat(rejected)
    write = lake.replace_where(
        "product_views",
        views,
        predicate=f"landed_hour >= '{first}' AND landed_hour <= '{last}'",
        partition_by=["landed_date"],
    )
    write_quarantine(lake, "product_views", rejects, (first, last))
    report_quarantine(context, lake)
    # Last, so that an hour is recorded as loaded from its files only once it is.
    lake.upsert(
        LOADED_FILES_TABLE,
        pl.DataFrame(
            hours_read,
            schema={"landed_hour": pl.String, "files_fingerprint": pl.String, "files": pl.Int64},
            orient="row",
        ).with_columns(loaded_at=pl.lit(datetime.now(UTC))),
        ["landed_hour"],
    )
    total = Conformed(loaded=views, quarantined=rejects.drop("partition_key"))
    context.log.info(
        f"product views {first} to {last}: {files} files, read {total.rows_read}, "
        f"loaded {views.height}, quarantined {rejects.height}; "
        f"wrote {write.uri} version {write.version}"
    )
    metadata = {
        **lake.table_metadata(write),
        **total.metadata(),
        "dagster/row_count": dg.MetadataValue.int(views.height),
        "files_read": dg.MetadataValue.int(files),
        "hours_without_files": dg.MetadataValue.int(silent_hours),
    }
    if files == 0:
        metadata["note"] = dg.MetadataValue.text(
            "No clickstream files have landed for these hours; the partition is empty."
        )
    return dg.MaterializeResult(metadata=metadata)


def clickstream_defs() -> dg.Definitions:
    source = dg.AssetSpec(
        keys.CLICKSTREAM_SOURCE,
        description="Hourly JSON-lines files of product views from the app and web shop.",
        group_name=keys.SOURCES_GROUP,
        kinds={"azure", "json"},
    )
    return dg.Definitions(assets=[source, product_views])

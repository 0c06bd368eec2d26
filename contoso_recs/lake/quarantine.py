"""The quarantine: every rejected source row, with its reason, kept as a lake table."""

import dagster as dg
import polars as pl

from contoso_recs.lake import keys
from contoso_recs.resources.lake import Lake, TableWrite

QUARANTINE_TABLE = "quarantine"
NO_PARTITION = ""


def write_quarantine(
    lake: Lake,
    target_table: str,
    rows: pl.DataFrame,
    partition_range: tuple[str, str] | None = None,
) -> TableWrite | None:
    """Record rejected rows for `target_table`.

    For a partitioned table the quarantine of the partitions in `partition_range` is replaced
    as a whole, so a rerun of an hour leaves exactly that hour's rejects; otherwise rows are
    upserted by their source reference, so re-reading a source row does not record it twice
    (and, unchanged, commits nothing).
    """
    partition_key = pl.lit(NO_PARTITION) if partition_range is None else pl.col("partition_key")
    framed = rows.with_columns(target_table=pl.lit(target_table)).with_columns(
        partition_key=partition_key
    )
    framed = framed.select("target_table", "partition_key", "source_ref", "reason", "raw")

    if partition_range is not None:
        first, last = partition_range
        predicate = (
            f"target_table = '{target_table}' AND partition_key >= '{first}' "
            f"AND partition_key <= '{last}'"
        )
        return lake.replace_where(QUARANTINE_TABLE, framed, predicate, ["target_table"])
    if framed.is_empty():
        return None
    # Two rejected rows may share a reference (no key to tell them apart): number the repeats.
    repeat = pl.int_range(pl.len()).over("source_ref")
    framed = framed.with_columns(
        source_ref=pl.when(repeat > 0)
        .then(pl.format("{}#{}", pl.col("source_ref"), repeat))
        .otherwise(pl.col("source_ref"))
    )
    return lake.upsert(
        QUARANTINE_TABLE,
        framed,
        keys=["target_table", "partition_key", "source_ref"],
        partition_by=["target_table"],
        when_changed=["reason", "raw"],
    )


# The tables whose extracts reject rows into the quarantine.
QUARANTINED_TABLES = [
    keys.PRODUCTS,
    keys.ORDERS,
    keys.ORDER_LINES,
    keys.PROMOTIONS,
    keys.CUSTOMERS,
    keys.PRODUCT_VIEWS,
    keys.PRODUCT_IMAGES,
]

quarantine_spec = dg.AssetSpec(
    keys.QUARANTINE,
    deps=QUARANTINED_TABLES,
    group_name=keys.LAKE_GROUP,
    kinds={"delta"},
    description="Every rejected source row with its reason, raw text and where it came from, "
    "written by the extract of its table, which reports each run's counts; a reject is "
    "replaced when its source is read again.",
)


def report_quarantine(context: dg.AssetExecutionContext, lake: Lake) -> None:
    """Record the quarantine's state as a materialisation of `lake/quarantine`, so the Catalog
    shows its rows per table and reason. Counts only: the raw text may hold personal data."""
    if not lake.exists(QUARANTINE_TABLE):
        return
    counts = (
        lake.scan(QUARANTINE_TABLE)
        .group_by("target_table", "reason")
        .len()
        .sort("target_table", "reason")
        .collect()
    )
    by_reason = {f"{table}/{reason}": int(rows) for table, reason, rows in counts.iter_rows()}
    context.log_event(
        dg.AssetMaterialization(
            asset_key=keys.QUARANTINE,
            metadata={
                "dagster/uri": dg.MetadataValue.path(lake.uri(QUARANTINE_TABLE)),
                "dagster/row_count": dg.MetadataValue.int(int(counts["len"].sum())),
                "delta_version": dg.MetadataValue.int(lake.version(QUARANTINE_TABLE) or 0),
                "rows_by_table_and_reason": dg.MetadataValue.json(by_reason),
            },
        )
    )

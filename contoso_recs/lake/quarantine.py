"""The quarantine: every rejected source row, with its reason, kept as a lake table."""

import polars as pl

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

"""The lake: Delta tables (Parquet files plus a transaction log) on a local disk or ADLS Gen2."""

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import dagster as dg
import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError

PREVIEW_ROWS = 5
# Wider than any preview (polars' limit), so that no cell is wrapped onto a second line.
MAX_TABLE_WIDTH = 65_535
PREVIEW_TEXT = 40
# Writers of one table in parallel steps (the sources' rejects all go to the quarantine) can
# conflict at commit: Delta's optimistic concurrency refuses the later commit, and the write is
# tried again on the new version. Every write here is a MERGE by key, a replacement of one
# partition, or a deletion (a table is created empty first), so trying it again gives the same
# table.
COMMIT_ATTEMPTS = 6
COMMIT_BACKOFF_SECONDS = 0.2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableWrite:
    """What one commit did to a lake table."""

    table: str
    uri: str
    version: int
    rows_written: int
    rows_inserted: int
    rows_updated: int
    rows_deleted: int = 0

    def then(self, later: "TableWrite | None") -> "TableWrite":
        """This write followed by a later one to the same table (a deletion), as one."""
        if later is None:
            return self
        return replace(
            self,
            version=later.version,
            rows_inserted=self.rows_inserted + later.rows_inserted,
            rows_updated=self.rows_updated + later.rows_updated,
            rows_deleted=self.rows_deleted + later.rows_deleted,
        )

    @property
    def state(self) -> str:
        """How the table stands after the write, for a log line."""
        changed = self.rows_inserted or self.rows_updated or self.rows_deleted
        return f"{'now at' if changed else 'unchanged at'} version {self.version}"


class Lake(dg.ConfigurableResource):
    """Delta tables under one root URI.

    Every write is a single Delta commit, so a run interrupted before the commit leaves the
    previous version as the current one, and every version stays readable by number.
    """

    root_uri: str

    def storage_options(self) -> dict[str, str]:
        """Options for object storage; a local folder needs none."""
        return {}

    def uri(self, table: str) -> str:
        return f"{self.root_uri.rstrip('/')}/{table}"

    def exists(self, table: str) -> bool:
        return DeltaTable.is_deltatable(self.uri(table), storage_options=self.storage_options())

    def delta_table(self, table: str, version: int | None = None) -> DeltaTable:
        return DeltaTable(
            self.uri(table), version=version, storage_options=self.storage_options() or None
        )

    def version(self, table: str) -> int | None:
        return self.delta_table(table).version() if self.exists(table) else None

    def scan(self, table: str, version: int | None = None) -> pl.LazyFrame:
        return pl.scan_delta(
            self.uri(table), version=version, storage_options=self.storage_options() or None
        )

    def read(self, table: str, version: int | None = None) -> pl.DataFrame:
        return self.scan(table, version).collect()

    def read_or_empty(self, table: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
        return self.read(table) if self.exists(table) else pl.DataFrame(schema=schema)

    def row_count(self, table: str) -> int:
        """Rows in the current version, from the transaction log's file statistics."""
        actions = pl.DataFrame(self.delta_table(table).get_add_actions(flatten=True))
        return int(actions["num_records"].sum()) if actions.height else 0

    def committed(self, table: str, write: Callable[[], "TableWrite"]) -> "TableWrite":
        """Run `write` (one commit to `table`), again on a commit conflict with another writer."""
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                return write()
            except CommitFailedError as error:
                if attempt == COMMIT_ATTEMPTS:
                    raise
                pause = COMMIT_BACKOFF_SECONDS * 2 ** (attempt - 1) * (1 + random.random())
                log.warning(
                    "lake table %s: commit %d of %d conflicted with another writer (%s); "
                    "trying again in %.1f s",
                    table,
                    attempt,
                    COMMIT_ATTEMPTS,
                    str(error).splitlines()[0][:200],
                    pause,
                )
                time.sleep(pause)
        raise AssertionError("unreachable")

    def upsert(
        self,
        table: str,
        rows: pl.DataFrame,
        keys: Sequence[str],
        newer_when: str | None = None,
        partition_by: Sequence[str] | None = None,
        when_changed: Sequence[str] | None = None,
    ) -> TableWrite:
        """MERGE rows into the table by key: insert new keys, update existing ones.

        With `newer_when` (a column such as `modified_at`), an existing row is only replaced by
        a strictly newer one, so re-reading old source rows never rolls a table back. With
        `when_changed` (columns), only when one of them differs: a MERGE that changes nothing
        commits no new version.
        """
        conditions = [f"s.{newer_when} > t.{newer_when}"] if newer_when else []
        if when_changed:
            changed = " OR ".join(f"(s.{c} IS DISTINCT FROM t.{c})" for c in when_changed)
            conditions.append(changed)
        update_when = " AND ".join(f"({c})" for c in conditions) or None
        return self.committed(
            table, lambda: self._merge(table, rows, keys, update_when, partition_by)
        )

    def _merge(
        self,
        table: str,
        rows: pl.DataFrame,
        keys: Sequence[str],
        update_when: str | None,
        partition_by: Sequence[str] | None,
    ) -> TableWrite:
        if not self.exists(table):
            self._create(table, rows, partition_by)

        predicate = " AND ".join(f"t.{key} = s.{key}" for key in keys)
        metrics = (
            rows.write_delta(
                self.uri(table),
                mode="merge",
                storage_options=self.storage_options() or None,
                delta_merge_options={
                    "predicate": predicate,
                    "source_alias": "s",
                    "target_alias": "t",
                },
            )
            .when_matched_update_all(predicate=update_when)
            .when_not_matched_insert_all()
            .execute()
        )
        return TableWrite(
            table=table,
            uri=self.uri(table),
            version=self.delta_table(table).version(),
            rows_written=rows.height,
            rows_inserted=int(metrics["num_target_rows_inserted"]),
            rows_updated=int(metrics["num_target_rows_updated"]),
        )

    def delete_keys(self, table: str, key: str, values: Sequence[int]) -> TableWrite | None:
        """Delete the rows whose integer `key` is one of `values` in one commit (None: none)."""
        if not values:
            return None
        return self.delete_where(table, f"{key} IN ({', '.join(str(int(v)) for v in values)})")

    def delete_where(self, table: str, predicate: str) -> TableWrite | None:
        """Delete the rows matching `predicate` (SQL) in one commit; None when no table."""
        if not self.exists(table):
            return None

        def delete() -> TableWrite:
            metrics = self.delta_table(table).delete(predicate)
            return TableWrite(
                table=table,
                uri=self.uri(table),
                version=self.delta_table(table).version(),
                rows_written=0,
                rows_inserted=0,
                rows_updated=0,
                rows_deleted=int(metrics.get("num_deleted_rows", 0)),
            )

        return self.committed(table, delete)

    def replace_where(
        self, table: str, rows: pl.DataFrame, predicate: str, partition_by: Sequence[str]
    ) -> TableWrite:
        """Atomically replace the rows matching `predicate` (one partition) with `rows`."""
        return self.committed(table, lambda: self._replace(table, rows, predicate, partition_by))

    def _replace(
        self, table: str, rows: pl.DataFrame, predicate: str, partition_by: Sequence[str]
    ) -> TableWrite:
        if not self.exists(table):
            self._create(table, rows, partition_by)
        rows.write_delta(
            self.uri(table),
            mode="overwrite",
            storage_options=self.storage_options() or None,
            delta_write_options={"predicate": predicate, "partition_by": list(partition_by)},
        )
        return TableWrite(
            table=table,
            uri=self.uri(table),
            version=self.delta_table(table).version(),
            rows_written=rows.height,
            rows_inserted=rows.height,
            rows_updated=0,
        )

    def _create(self, table: str, rows: pl.DataFrame, partition_by: Sequence[str] | None) -> None:
        """Create the table empty, with the rows' schema, unless it exists already; the rows are
        then written as to any table. Writers that create it at the same moment leave it empty,
        and their writes then conflict and are tried again like any other: a key is never
        written twice."""
        options = {"partition_by": list(partition_by)} if partition_by else {}
        rows.head(0).write_delta(
            self.uri(table),
            mode="ignore",
            storage_options=self.storage_options() or None,
            delta_write_options=options,
        )

    def table_metadata(
        self, write: TableWrite, preview_columns: Sequence[str] | None = None
    ) -> dict[str, dg.MetadataValue]:
        """What the Dagster UI shows for a lake table after a write."""
        scan = self.scan(write.table)
        schema = scan.collect_schema()
        preview = scan.select(preview_columns or schema.names()).head(PREVIEW_ROWS).collect()
        return {
            "dagster/uri": dg.MetadataValue.path(write.uri),
            "dagster/row_count": dg.MetadataValue.int(self.row_count(write.table)),
            "dagster/column_schema": dg.MetadataValue.table_schema(table_schema(schema)),
            "delta_version": dg.MetadataValue.int(write.version),
            "rows_inserted": dg.MetadataValue.int(write.rows_inserted),
            "rows_updated": dg.MetadataValue.int(write.rows_updated),
            **(
                {"rows_deleted": dg.MetadataValue.int(write.rows_deleted)}
                if write.rows_deleted
                else {}
            ),
            "preview": dg.MetadataValue.md(markdown_preview(preview)),
        }


def table_schema(schema: pl.Schema) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name=name, type=str(dtype)) for name, dtype in schema.items()]
    )


def markdown_preview(frame: pl.DataFrame, rows: int = PREVIEW_ROWS) -> str:
    """The first rows as a Markdown table, one line a row: text is put on one line, cut at
    PREVIEW_TEXT characters, and a | in it escaped (it would end its cell)."""
    head = frame.head(rows)
    texts = [
        _preview_text(name)
        for name, dtype in head.schema.items()
        if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)
    ]
    with pl.Config(
        tbl_width_chars=MAX_TABLE_WIDTH,
        tbl_formatting="MARKDOWN",
        tbl_hide_column_data_types=True,
        tbl_hide_dataframe_shape=True,
        fmt_str_lengths=2 * PREVIEW_TEXT,  # room for the escapes; the text is cut already
        tbl_rows=rows,
        tbl_cols=-1,
    ):
        return str(head.with_columns(texts))


def _preview_text(name: str) -> pl.Expr:
    one_line = pl.col(name).cast(pl.String).str.replace_all(r"\s+", " ")
    cut = (
        pl.when(one_line.str.len_chars() > PREVIEW_TEXT)
        .then(one_line.str.slice(0, PREVIEW_TEXT - 1) + "…")
        .otherwise(one_line)
    )
    escaped = cut.str.replace_all("\\", "\\\\", literal=True)  # so that \| stays an escape
    return escaped.str.replace_all("|", "\\|", literal=True).alias(name)

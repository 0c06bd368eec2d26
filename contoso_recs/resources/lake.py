"""The lake: Delta tables (Parquet files plus a transaction log) on a local disk or ADLS Gen2."""

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg
import polars as pl
from deltalake import DeltaTable

PREVIEW_ROWS = 5


@dataclass(frozen=True)
class TableWrite:
    """What one commit did to a lake table."""

    table: str
    uri: str
    version: int
    rows_written: int
    rows_inserted: int
    rows_updated: int

    @property
    def state(self) -> str:
        """How the table stands after the write, for a log line."""
        changed = self.rows_inserted or self.rows_updated
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

    def upsert(
        self,
        table: str,
        rows: pl.DataFrame,
        keys: Sequence[str],
        newer_when: str | None = None,
        partition_by: Sequence[str] | None = None,
    ) -> TableWrite:
        """MERGE rows into the table by key: insert new keys, update existing ones.

        With `newer_when` (a column such as `modified_at`), an existing row is only replaced by
        a strictly newer one, so re-reading old source rows never rolls a table back.
        """
        if not self.exists(table):
            return self._create(table, rows, partition_by)

        predicate = " AND ".join(f"t.{key} = s.{key}" for key in keys)
        update_when = f"s.{newer_when} > t.{newer_when}" if newer_when else None
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

    def replace_where(
        self, table: str, rows: pl.DataFrame, predicate: str, partition_by: Sequence[str]
    ) -> TableWrite:
        """Atomically replace the rows matching `predicate` (one partition) with `rows`."""
        if not self.exists(table):
            return self._create(table, rows, partition_by)
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

    def _create(
        self, table: str, rows: pl.DataFrame, partition_by: Sequence[str] | None
    ) -> TableWrite:
        options = {"partition_by": list(partition_by)} if partition_by else {}
        rows.write_delta(
            self.uri(table),
            mode="append",
            storage_options=self.storage_options() or None,
            delta_write_options=options,
        )
        return TableWrite(
            table=table,
            uri=self.uri(table),
            version=self.delta_table(table).version(),
            rows_written=rows.height,
            rows_inserted=rows.height,
            rows_updated=0,
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
            "preview": dg.MetadataValue.md(markdown_preview(preview)),
        }


def table_schema(schema: pl.Schema) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name=name, type=str(dtype)) for name, dtype in schema.items()]
    )


def markdown_preview(frame: pl.DataFrame, rows: int = PREVIEW_ROWS) -> str:
    with pl.Config(
        tbl_formatting="MARKDOWN",
        tbl_hide_column_data_types=True,
        tbl_hide_dataframe_shape=True,
        fmt_str_lengths=40,
        tbl_rows=rows,
        tbl_cols=-1,
    ):
        return str(frame.head(rows))

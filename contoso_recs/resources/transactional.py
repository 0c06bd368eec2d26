"""The transactional source: products, orders and order lines (Azure SQL in production)."""

import sqlite3
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from typing import Any, Protocol

import dagster as dg
import polars as pl

FETCH_BATCH_ROWS = 100_000


class DbApiConnection(Protocol):
    """The part of a DB-API 2.0 connection the extract uses (sqlite3 and pyodbc alike)."""

    def cursor(self) -> Any: ...

    def close(self) -> None: ...


class TransactionalSource(dg.ConfigurableResource):
    """A relational database reached through DB-API with `?` parameters.

    Every value comes back as text so that a wrongly typed value in the source is quarantined
    with its reason by the lake's conform step instead of failing the whole extract.
    """

    @abstractmethod
    def connect(self) -> DbApiConnection:
        """Open a new DB-API connection."""

    @contextmanager
    def connection(self) -> Iterator[DbApiConnection]:
        with closing(self.connect()) as conn:
            yield conn

    def read_changed_rows(
        self, table: str, columns: Sequence[str], modified_since: str | None
    ) -> pl.DataFrame:
        """Rows of `table` whose `modified_at` is at or after the watermark, as text columns.

        Reading from the watermark itself (>=) re-reads the last second safely: the lake upserts
        by key, so a row read twice is loaded once.
        """
        query = f"SELECT {', '.join(columns)} FROM {table}"
        params: tuple[str, ...] = ()
        if modified_since is not None:
            query += " WHERE modified_at >= ?"
            params = (modified_since,)
        query += " ORDER BY modified_at"

        frames = []
        with self.connection() as conn:
            cursor = conn.cursor()
            cursor.execute(query, params)
            while rows := cursor.fetchmany(FETCH_BATCH_ROWS):
                frames.append(_rows_as_text(rows, columns))
        if not frames:
            return pl.DataFrame(schema=dict.fromkeys(columns, pl.String))
        return pl.concat(frames)


def _rows_as_text(rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> pl.DataFrame:
    if rows and not isinstance(rows[0], tuple):
        rows = [tuple(row) for row in rows]  # pyodbc's Row objects
    schema = dict.fromkeys(columns, pl.String)
    try:
        return pl.DataFrame(rows, schema=schema, orient="row", strict=False)
    except pl.exceptions.PolarsError:
        # A value polars cannot take as text (a BLOB, say): convert value by value, so the
        # conform step quarantines it as invalid instead of the whole extract failing.
        return pl.DataFrame(
            [tuple(_as_text(value) for value in row) for row in rows],
            schema=schema,
            orient="row",
        )


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return "0x" + bytes(value).hex()
    return str(value)


class SqliteTransactionalSource(TransactionalSource):
    """The embedded stand-in: a SQLite file read through the same DB-API code path as pyodbc."""

    database_path: str

    def connect(self) -> DbApiConnection:
        uri = f"file:{self.database_path}?mode=ro"
        return sqlite3.connect(uri, uri=True)


class OdbcTransactionalSource(TransactionalSource):
    """A database reached through an ODBC driver with pyodbc (Azure SQL uses ODBC Driver 18).

    The connection string comes from a `dg.EnvVar`, so it never appears in code or logs.
    """

    connection_string: str

    def connect(self) -> DbApiConnection:
        import pyodbc

        return pyodbc.connect(self.connection_string, readonly=True)

"""The transactional extract through pyodbc and a real ODBC driver (unixODBC + SQLite driver).

Azure SQL is reached through pyodbc and Microsoft's ODBC Driver 18; here the same
`OdbcTransactionalSource` talks to Debian's SQLite ODBC driver, so the ODBC code path (connect,
`?` parameters, fetchmany, pyodbc rows) is exercised for real.
"""

import polars as pl

from contoso_recs.automation.jobs import lake_refresh_job
from contoso_recs.definitions import build_definitions
from contoso_recs.environment import local_resources
from contoso_recs.lake.quarantine import QUARANTINE_TABLE
from contoso_recs.resources.transactional import OdbcTransactionalSource
from contoso_recs_tests.conftest import (
    LINE_COLUMNS,
    ORDER_COLUMNS,
    PRODUCT_COLUMNS,
    materialization,
)

T0 = "2026-11-01 09:00:00"


def fill(sources) -> None:
    sources.sql("products", PRODUCT_COLUMNS, [(10, "Oat milk", "dairy", 1.5, 0, T0)])
    sources.sql("orders", ORDER_COLUMNS, [(100, 1, 7, "store", T0, T0)])
    sources.sql(
        "order_lines",
        LINE_COLUMNS,
        [(100, 1, 10, 2, 3.0, T0), (100, 2, 10, -1, -1.5, T0), (100, 3, 999, 1, 1.0, T0)],
    )


def refresh_through_odbc(data_dir, instance):
    connection_string = f"Driver=SQLite3;Database={sources_db(data_dir)}"
    resources = {
        **local_resources(data_dir),
        "transactional_source": OdbcTransactionalSource(connection_string=connection_string),
    }
    job = build_definitions(resources).resolve_job_def(lake_refresh_job.name)
    return job.execute_in_process(instance=instance, raise_on_error=False)


def sources_db(data_dir):
    return data_dir / "sources" / "transactions.sqlite"


def test_odbc_extract_loads_and_quarantines_like_the_embedded_source(
    sources, data_dir, instance, lake
):
    fill(sources)

    result = refresh_through_odbc(data_dir, instance)

    assert result.success
    lines = materialization(result, "lake", "order_lines")
    assert (lines["rows_read"], lines["rows_loaded"], lines["rows_quarantined"]) == (3, 1, 2)
    assert lake.read("order_lines").select("order_id", "line_number").rows() == [(100, 1)]
    reasons = lake.read(QUARANTINE_TABLE).filter(pl.col("target_table") == "order_lines")
    assert sorted(reasons["reason"]) == ["negative_quantity", "unknown_product"]
    assert lake.read("orders")["ordered_at"].dt.to_string("%Y-%m-%d %H:%M:%S").to_list() == [T0]


def test_odbc_extract_is_incremental_from_the_watermark(sources, data_dir, instance, lake):
    fill(sources)
    refresh_through_odbc(data_dir, instance)
    sources.sql(
        "orders", ORDER_COLUMNS, [(101, 2, 7, "web", "2026-11-03 10:00:00", "2026-11-03 10:00:00")]
    )

    result = refresh_through_odbc(data_dir, instance)

    orders = materialization(result, "lake", "orders")
    assert (orders["watermark_before"], orders["watermark"]) == (T0, "2026-11-03 10:00:00")
    assert (orders["rows_read"], orders["rows_inserted"]) == (2, 1)
    assert sorted(lake.read("orders")["order_id"]) == [100, 101]


def test_timestamps_the_driver_returns_as_datetimes_with_fractions_of_a_second_load(
    sources, data_dir, instance, lake
):
    """Azure SQL's datetime2 columns reach pyodbc as datetime values with milliseconds; the
    SQLite driver does the same for columns declared TIMESTAMP."""
    import sqlite3

    with sqlite3.connect(sources_db(data_dir)) as conn:
        conn.executescript(
            """
            DROP TABLE orders;
            CREATE TABLE orders (
                order_id INTEGER PRIMARY KEY, customer_id INTEGER, store_id INTEGER,
                channel TEXT, ordered_at TIMESTAMP NOT NULL, modified_at TIMESTAMP NOT NULL
            );
            """
        )
    conn.close()
    fill(sources)
    sources.sql(
        "orders",
        ORDER_COLUMNS,
        [(101, 2, 7, "web", "2026-11-02 10:00:00.250", "2026-11-02 10:00:01.125")],
    )

    result = refresh_through_odbc(data_dir, instance)

    orders = materialization(result, "lake", "orders")
    assert (orders["rows_read"], orders["rows_loaded"], orders["rows_quarantined"]) == (2, 2, 0)
    assert orders["watermark"] == "2026-11-02 10:00:01"
    stamps = lake.read("orders").sort("order_id")["ordered_at"].dt.to_string("%H:%M:%S%.3f")
    assert stamps.to_list() == ["09:00:00.000", "10:00:00.250"]

    again = materialization(refresh_through_odbc(data_dir, instance), "lake", "orders")
    assert (again["rows_read"], again["rows_inserted"], again["rows_updated"]) == (1, 0, 0)

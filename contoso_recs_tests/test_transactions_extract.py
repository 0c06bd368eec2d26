"""Products, orders and order lines: typed, quarantined with reasons, incremental, idempotent."""

import contextlib

import polars as pl

from contoso_recs.lake.quarantine import QUARANTINE_TABLE
from contoso_recs_tests.conftest import (
    LINE_COLUMNS,
    ORDER_COLUMNS,
    PRODUCT_COLUMNS,
    materialization,
    refresh_lake,
)

T0 = "2026-11-01 09:00:00"
T1 = "2026-11-02 09:00:00"


def fill_catalogue_and_orders(sources) -> None:
    sources.sql(
        "products",
        PRODUCT_COLUMNS,
        [
            (10, "Oat milk 1l", "dairy", 1.5, 0, T0),
            (11, "Rye bread", "bakery", 2.0, 0, T0),
            (12, "Old cola", "drinks", 1.0, 1, T0),
            (13, "Broken price", "drinks", -3.0, 0, T0),
        ],
    )
    sources.sql(
        "orders",
        ORDER_COLUMNS,
        [
            (100, 1, 7, "store", T0, T0),
            (101, 2, 7, "app", T0, T0),
            (102, None, 7, "web", T0, T0),
            (103, 3, 7, "web", "1970-01-01 00:00:00", T0),
        ],
    )
    sources.sql(
        "order_lines",
        LINE_COLUMNS,
        [
            (100, 1, 10, 2, 3.0, T0),
            (100, 2, 11, 1, 2.0, T0),
            (101, 1, 12, 1, 1.0, T0),
            (101, 2, 10, -1, -1.5, T0),
            (101, 3, 999, 1, 1.0, T0),
            (101, 4, 10, "two", 3.0, T0),
        ],
    )


def quarantine_reasons(lake, table: str) -> list[tuple[str, str]]:
    rows = lake.read(QUARANTINE_TABLE).filter(pl.col("target_table") == table)
    return sorted(zip(rows["source_ref"], rows["reason"], strict=True))


def test_every_row_read_is_loaded_or_quarantined_with_its_reason(sources, data_dir, instance, lake):
    fill_catalogue_and_orders(sources)

    result = refresh_lake(data_dir, instance)

    assert result.success
    products = materialization(result, "lake", "products")
    assert (products["rows_read"], products["rows_loaded"], products["rows_quarantined"]) == (
        4,
        3,
        1,
    )
    lines = materialization(result, "lake", "order_lines")
    assert (lines["rows_read"], lines["rows_loaded"], lines["rows_quarantined"]) == (6, 3, 3)
    assert lines["quarantined_by_reason"] == {
        "invalid_quantity": 1,
        "negative_quantity": 1,
        "unknown_product": 1,
    }
    assert quarantine_reasons(lake, "orders") == [
        (f"102@{T0}", "missing_customer_id"),
        (f"103@{T0}", "ordered_at_out_of_range"),
    ]
    assert quarantine_reasons(lake, "products") == [(f"13@{T0}", "negative_price")]
    assert lake.read("order_lines").sort("order_id", "line_number").select(
        "order_id", "line_number", "product_id", "quantity"
    ).rows() == [(100, 1, 10, 2), (100, 2, 11, 1), (101, 1, 12, 1)]


def test_lake_tables_are_typed_and_carry_ui_metadata(sources, data_dir, instance, lake):
    fill_catalogue_and_orders(sources)

    result = refresh_lake(data_dir, instance)

    orders = lake.read("orders")
    assert orders.schema["order_id"] == pl.Int64
    assert orders.schema["ordered_at"] == pl.Datetime("us", "UTC")
    assert lake.read("products").filter(pl.col("product_id") == 12)["discontinued"].item()
    metadata = materialization(result, "lake", "orders")
    assert metadata["dagster/row_count"] == 2
    assert [c.name for c in metadata["dagster/column_schema"].columns] == list(orders.columns)
    assert metadata["dagster/uri"].endswith("lake/orders")
    assert metadata["delta_version"] == 1  # version 0 creates the table empty
    assert "| order_id" in metadata["preview"]


def test_a_rerun_without_changes_leaves_every_table_as_it_was(sources, data_dir, instance, lake):
    fill_catalogue_and_orders(sources)
    refresh_lake(data_dir, instance)
    before = {t: lake.read(t).sort(pl.all()) for t in ("products", "orders", "order_lines")}
    quarantine_before = lake.read(QUARANTINE_TABLE).sort(pl.all())
    quarantine_version = lake.version(QUARANTINE_TABLE)

    result = refresh_lake(data_dir, instance)

    assert result.success
    for table, frame in before.items():
        assert lake.read(table).sort(pl.all()).equals(frame), table
    assert lake.read(QUARANTINE_TABLE).sort(pl.all()).equals(quarantine_before)
    # The rejects read again at the watermark second are the same: no new version.
    assert lake.version(QUARANTINE_TABLE) == quarantine_version


def test_second_run_reads_only_rows_changed_since_the_watermark(sources, data_dir, instance, lake):
    fill_catalogue_and_orders(sources)
    first = refresh_lake(data_dir, instance)
    assert materialization(first, "lake", "orders")["watermark"] == T0
    sources.sql("products", PRODUCT_COLUMNS, [(11, "Rye bread", "bakery", 2.5, 0, T1)])
    sources.sql("orders", ORDER_COLUMNS, [(104, 1, 7, "app", T1, T1)])
    sources.sql("order_lines", LINE_COLUMNS, [(104, 1, 11, 3, 7.5, T1)])

    second = refresh_lake(data_dir, instance)

    orders = materialization(second, "lake", "orders")
    # The watermark second itself is read again (4 orders at T0), plus the one new order.
    assert (orders["watermark_before"], orders["watermark"], orders["rows_read"]) == (T0, T1, 5)
    assert (orders["rows_inserted"], orders["rows_updated"]) == (1, 0)
    assert materialization(second, "lake", "products")["rows_updated"] == 1
    assert lake.read("products").filter(pl.col("product_id") == 11)["price"].item() == 2.5
    assert lake.read("orders").height == 3
    assert lake.read("order_lines").height == 4


def test_an_older_source_row_never_rolls_a_table_back(sources, data_dir, instance, lake):
    fill_catalogue_and_orders(sources)
    sources.sql("products", PRODUCT_COLUMNS, [(11, "Rye bread", "bakery", 2.5, 0, T1)])
    refresh_lake(data_dir, instance)
    lake.upsert(
        "products",
        lake.read("products").filter(pl.col("product_id") == 11).with_columns(price=pl.lit(9.9)),
        ["product_id"],
        newer_when="modified_at",
    )

    assert lake.read("products").filter(pl.col("product_id") == 11)["price"].item() == 2.5


def test_an_interrupted_refresh_keeps_the_previous_version_and_the_next_run_recovers(
    sources, data_dir, instance, lake, monkeypatch
):
    fill_catalogue_and_orders(sources)
    refresh_lake(data_dir, instance)
    lines_before = lake.read("order_lines")
    version_before = lake.version("order_lines")
    sources.sql("order_lines", LINE_COLUMNS, [(100, 3, 11, 1, 2.0, T1)])

    original_upsert = type(lake).upsert

    def crash_on_order_lines(self, table, *args, **kwargs):
        if table == "order_lines":
            raise KeyboardInterrupt("machine lost power")
        return original_upsert(self, table, *args, **kwargs)

    monkeypatch.setattr(type(lake), "upsert", crash_on_order_lines)
    with contextlib.suppress(KeyboardInterrupt):
        refresh_lake(data_dir, instance)
    # A writer that died mid-write also leaves a stray data file behind; readers ignore it.
    stray = data_dir / "lake" / "order_lines" / "part-00000-torn-write.parquet"
    stray.write_bytes(b"PAR1 half written")

    assert lake.version("order_lines") == version_before
    assert lake.read("order_lines").equals(lines_before)

    monkeypatch.setattr(type(lake), "upsert", original_upsert)
    result = refresh_lake(data_dir, instance)
    assert result.success
    assert lake.read("order_lines").height == lines_before.height + 1
    assert lake.read("order_lines", version=version_before).equals(lines_before)


PROMOTION_COLUMNS = ["week_start", "product_id", "mailer_share", "display_share", "modified_at"]


def test_the_promotion_plan_is_loaded_by_week_and_product_and_bad_rows_quarantined(
    sources, data_dir, instance, lake
):
    fill_catalogue_and_orders(sources)
    sources.sql(
        "promotions",
        PROMOTION_COLUMNS,
        [
            ("2026-11-02", 10, 0.75, 0.0, T0),
            ("2026-11-02 00:00:00", 11, 0.0, 0.5, T0),  # a datetime2 column at midnight
            ("2026-11-03", 12, 0.5, 0.0, T0),  # a Tuesday
            ("2026-11-09", 10, 1.5, 0.0, T0),
            ("2026-11-09", 999, 0.5, 0.0, T0),
            ("2026-11-09", 11, "most", 0.0, T0),
            ("2026-11-09", 12, 0.5, -0.1, T0),
            ("2026-11-09 09:00:00", 13, 0.5, 0.0, T0),
        ],
    )

    first = refresh_lake(data_dir, instance)

    promotions = materialization(first, "lake", "promotions")
    assert (promotions["rows_read"], promotions["rows_loaded"]) == (8, 2)
    assert promotions["quarantined_by_reason"] == {
        "week_start_not_monday": 1,
        "share_out_of_range": 2,
        "unknown_product": 1,
        "invalid_mailer_share": 1,
        "invalid_week_start": 1,
    }
    loaded = lake.read("promotions").sort("product_id")
    assert loaded.schema["week_start"] == pl.Date
    assert loaded.select("product_id", "mailer_share", "display_share").rows() == [
        (10, 0.75, 0.0),
        (11, 0.0, 0.5),
    ]
    assert quarantine_reasons(lake, "promotions") == [
        (f"2026-11-03/12@{T0}", "week_start_not_monday"),
        (f"2026-11-09 09:00:00/13@{T0}", "invalid_week_start"),
        (f"2026-11-09/10@{T0}", "share_out_of_range"),
        (f"2026-11-09/11@{T0}", "invalid_mailer_share"),
        (f"2026-11-09/12@{T0}", "share_out_of_range"),
        (f"2026-11-09/999@{T0}", "unknown_product"),
    ]

    # A revised plan replaces the week's row for the product; a rerun changes nothing more.
    sources.sql("promotions", PROMOTION_COLUMNS, [("2026-11-02", 10, 0.25, 0.0, T1)])
    refresh_lake(data_dir, instance)
    again = refresh_lake(data_dir, instance)
    rerun = materialization(again, "lake", "promotions")
    assert (rerun["rows_inserted"], rerun["rows_updated"]) == (0, 0)
    assert lake.read("promotions").sort("product_id")["mailer_share"].to_list() == [0.25, 0.0]

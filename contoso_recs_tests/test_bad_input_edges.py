"""Bad input found by attacking the extracts: each is quarantined or refused, never a crash."""

from datetime import datetime

import polars as pl

from contoso_recs.lake.quarantine import QUARANTINE_TABLE
from contoso_recs.resources.lake import markdown_preview
from contoso_recs.sources.clickstream import read_landed_file
from contoso_recs_tests.conftest import (
    PRODUCT_COLUMNS,
    load_hour,
    materialization,
    refresh_lake,
    view_line,
)
from contoso_recs_tests.test_customers_and_images_extract import contact

T0 = "2026-11-01 08:00:00"


def reasons(lake, table: str) -> list[str]:
    rows = lake.read(QUARANTINE_TABLE).filter(pl.col("target_table") == table)
    return sorted(rows["reason"])


def test_a_row_stamped_in_the_future_is_quarantined_and_does_not_hold_the_watermark(
    sources, data_dir, instance, lake
):
    sources.sql(
        "products",
        PRODUCT_COLUMNS,
        [(1, "Tea", "drinks", 2.0, 0, T0), (2, "Ghost", "drinks", 1.0, 0, "2999-01-01 00:00:00")],
    )
    first = refresh_lake(data_dir, instance)
    sources.sql(
        "products", PRODUCT_COLUMNS, [(1, "Green tea", "drinks", 2.0, 0, "2026-11-02 08:00:00")]
    )

    refresh_lake(data_dir, instance)

    assert materialization(first, "lake", "products")["watermark"] == T0
    assert reasons(lake, "products") == ["modified_at_in_future"]
    assert lake.read("products").filter(pl.col("product_id") == 1)["name"].item() == "Green tea"


def test_a_binary_value_in_the_database_is_quarantined_as_invalid(
    sources, data_dir, instance, lake
):
    sources.sql("products", PRODUCT_COLUMNS, [(1, "Tea", "drinks", b"\x00\x01", 0, T0)])

    result = refresh_lake(data_dir, instance)

    assert result.success
    assert reasons(lake, "products") == ["invalid_price"]


def test_a_price_that_is_not_a_finite_number_is_quarantined(sources, data_dir, instance, lake):
    sources.sql("products", PRODUCT_COLUMNS, [(1, "Tea", "drinks", "NaN", 0, T0)])

    refresh_lake(data_dir, instance)

    assert reasons(lake, "products") == ["invalid_price"]


def test_crm_entries_that_are_not_records_are_quarantined_and_every_one_is_kept(
    sources, data_dir, instance, lake
):
    nameless = {**contact(5), "contactid": None}
    sources.crm_pages([[contact(1), "oops", nameless, {**nameless, "contoso_customerid": 6}]])

    result = refresh_lake(data_dir, instance)

    metadata = materialization(result, "lake", "customers")
    assert (metadata["rows_read"], metadata["rows_loaded"], metadata["rows_quarantined"]) == (
        4,
        1,
        3,
    )
    assert reasons(lake, "customers") == [
        "malformed_record",
        "missing_contact_id",
        "missing_contact_id",
    ]


def test_a_second_image_for_the_same_product_is_quarantined_as_a_duplicate(
    sources, data_dir, instance, lake
):
    sources.image("12.png", rgb=(255, 0, 0))
    sources.image("012.png", rgb=(0, 255, 0))
    sources.image("²3.png", rgb=(0, 0, 255))

    result = refresh_lake(data_dir, instance)

    assert result.success
    assert lake.read("product_images")["product_id"].to_list() == [12]
    assert materialization(result, "lake", "product_images")["quarantined_by_reason"] == {
        "duplicate": 1,
        "invalid_product_id": 1,
    }


def test_a_byte_order_mark_does_not_cost_the_first_view():
    content = b"\xef\xbb\xbf" + (view_line("e1") + "\n" + view_line("e2") + "\n").encode()

    rows, rejects = read_landed_file("f.jsonl", content)

    assert rows["event_id"].to_list() == ["e1", "e2"]
    assert rejects.is_empty()


def test_bytes_that_are_not_utf8_are_replaced_and_a_cut_line_beside_them_quarantined():
    content = (
        view_line("e1", device="DEVICE")
        .replace("DEVICE", "io\udcff")
        .encode("utf-8", "surrogateescape")
        + b"\n"
        + (view_line("e2") + "\n" + view_line("e3")[:30]).encode()
    )

    rows, rejects = read_landed_file("f.jsonl", content)

    assert rows.select("event_id", "device").rows() == [("e1", "io\ufffd"), ("e2", "ios")]
    assert rejects.select("source_ref", "raw").rows() == [("f.jsonl:3", view_line("e3")[:30])]


def test_blank_lines_do_not_shift_the_line_numbers_of_rejected_views():
    content = (view_line("e1") + "\r\n\r\n  \n" + '{"event_id": "e2", ').encode()

    rows, rejects = read_landed_file("f.jsonl", content)

    assert rows.select("event_id", "_line").rows() == [("e1", 1)]
    assert rejects["source_ref"].to_list() == ["f.jsonl:4"]


def test_dwell_time_that_is_not_a_finite_number_is_quarantined(sources, data_dir, instance, lake):
    lake.upsert("products", pl.DataFrame({"product_id": [10]}), ["product_id"])
    sources.clickstream_file(
        datetime(2026, 11, 20, 10),
        "part-0000.jsonl",
        [view_line("e1", dwell_seconds="NaN"), view_line("e2", dwell_seconds="Infinity")],
    )

    load_hour(data_dir, instance, "2026-11-20-10:00")

    assert reasons(lake, "product_views") == ["invalid_dwell_seconds", "invalid_dwell_seconds"]


def test_a_wide_preview_keeps_one_line_a_row_and_a_bar_inside_a_cell():
    names = [
        "Northwind Mouthwash Extra Fresh 500 ml, twin pack with travel cap",
        "Salt | Pepper\ngrinder set",
    ]
    frame = pl.DataFrame(
        {
            "customer_id": [1, 2],
            "name": names,
            "reason": ["you often buy this", "customers who buy yours buy this"],
            "model_version": ["20261123-2a9f5d29"] * 2,
            "category": pl.Series(["Health & Beauty", "Spices | Herbs"], dtype=pl.Categorical),
        }
    )

    lines = markdown_preview(frame).splitlines()

    assert len(lines) == 4  # header, separator, a line per row: nothing wrapped or split
    assert all(line.count(" | ") == 4 for line in (lines[0], lines[2]))
    assert "Salt \\| Pepper grinder set" in lines[3] and "Spices \\| Herbs" in lines[3]
    assert lines[3].replace("\\|", "").count("|") == 6
    assert "| Northwind Mouthwash Extra Fresh 500 ml,… |" in lines[2]


def test_a_backslash_before_a_bar_does_not_end_the_cell():
    frame = pl.DataFrame({"path": ["C:\\exports\\|weekly"], "rank": [1]})

    row = markdown_preview(frame).splitlines()[2]

    assert row.startswith("| C:\\\\exports\\\\\\|weekly |")  # \\ then \| : one cell

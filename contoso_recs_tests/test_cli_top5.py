"""`contoso-recs top5`: one customer's five products, read back from the weekly email table."""

from datetime import date

import polars as pl
import pytest

from contoso_recs.cli import main
from contoso_recs.recommender.weekly import TABLE_SCHEMA
from contoso_recs.resources.lake import Lake
from contoso_recs.weekly_email.assets import TABLE


def write_week(lake: Lake, week: date, customer: int, products: list[int], version: str) -> None:
    rows = pl.DataFrame(
        {
            "week": [week] * len(products),
            "customer_id": [customer] * len(products),
            "rank": list(range(1, len(products) + 1)),
            "product_id": products,
            "score": [1.0 - rank / 10 for rank in range(len(products))],
            "reason": ["bought_before"] * len(products),
            "product_name": [f"Product {p}" for p in products],
            "price": [None if p == 13 else 2.5 for p in products],
            "image_ref": [""] * len(products),
            "model_version": [version] * len(products),
        },
        schema=TABLE_SCHEMA,
    )
    lake.replace_where(TABLE, rows, f"week = '{week}'", partition_by=["week"])


@pytest.fixture
def data_dir(tmp_path):
    lake = Lake(root_uri=str(tmp_path / "lake"))
    write_week(lake, date(2026, 11, 16), 7, [1, 2, 3, 4, 5], "v1")
    write_week(lake, date(2026, 11, 23), 7, [15, 14, 13, 12, 11], "v2")
    return tmp_path


def test_the_latest_week_is_shown_in_rank_order_by_default(data_dir, capsys):
    assert main(["top5", "--customer", "7", "--data-dir", str(data_dir)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "week of 2026-11-23, customer 7, model v2:"
    assert lines[1] == "  1. 15  Product 15  2.50  bought_before  (score 1.0000)"
    assert lines[3] == "  3. 13  Product 13  bought_before  (score 0.8000)"  # no price
    assert [line.split(".")[0].strip() for line in lines[1:]] == ["1", "2", "3", "4", "5"]


def test_an_earlier_week_is_shown_when_asked_for(data_dir, capsys):
    argv = ["top5", "--customer", "7", "--week", "2026-11-16", "--data-dir", str(data_dir)]

    assert main(argv) == 0

    out = capsys.readouterr().out
    assert out.startswith("week of 2026-11-16, customer 7, model v1:")
    assert "  5. 5  Product 5" in out


def test_a_customer_not_in_the_week_is_said_so_with_exit_code_1(data_dir, capsys):
    assert main(["top5", "--customer", "8", "--data-dir", str(data_dir)]) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        "customer 8 has no products in the week of 2026-11-23, which holds 1 customers "
        "(ids 7 to 7)" in captured.err
    )


def test_no_table_yet_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["top5", "--customer", "7", "--data-dir", str(tmp_path)])

    assert stopped.value.code == 2
    assert "no weekly email table at" in capsys.readouterr().err


@pytest.mark.parametrize(
    "week, said",
    [
        ("2026-11-24", "--week 2026-11-24 is a Tuesday: a week is named by its Monday"),
        ("2026-11-30", "the week of 2026-11-30 is not written"),
    ],
)
def test_a_week_that_is_not_a_written_monday_is_refused_with_the_weeks_written(
    week, said, data_dir, capsys
):
    with pytest.raises(SystemExit) as stopped:
        main(["top5", "--customer", "7", "--week", week, "--data-dir", str(data_dir)])

    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert said in err and "latest 8: 2026-11-16, 2026-11-23" in err

"""The training benchmark's 2-million-row customer table, built from the demo customers."""

from datetime import UTC, datetime

import polars as pl

from benchmarks.training import larger_customer_table


def customers() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "customer_id": [7, 9, 12],
            "age_band": ["25-34", "65+", None],
            "income_band": ["50-74K", "100-124K", "25-34K"],
            "household_size": [2, 1, 4],
            "created_at": [datetime(2025, 1, d, tzinfo=UTC) for d in (1, 2, 3)],
        }
    )


def test_the_table_grows_to_the_rows_asked_with_new_ids_above_the_old_ones():
    grown = larger_customer_table(customers(), 10)
    assert grown.height == 10
    assert grown.schema == customers().schema
    assert grown["customer_id"].to_list() == [7, 9, 12, *range(13, 20)]
    assert grown.head(3).equals(customers())


def test_new_profiles_are_drawn_from_the_existing_ones():
    grown = larger_customer_table(customers(), 200)
    profile = ["age_band", "income_band", "household_size", "created_at"]
    assert set(grown.select(profile).rows()) == set(customers().select(profile).rows())


def test_a_table_already_large_enough_is_left_as_it_is():
    assert larger_customer_table(customers(), 2).equals(customers())

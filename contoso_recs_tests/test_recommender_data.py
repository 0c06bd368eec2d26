"""Point-in-time correctness: nothing at or after a cutoff reaches what is built for it."""

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from contoso_recs.recommender.data import (
    LakeFrames,
    before,
    catalogue,
    customer_segments,
    decayed_history,
    history_events,
    purchases,
    read_lake,
    temporal_split,
)
from contoso_recs.recommender.encoding import build_vocabulary, encode_customers

CUTOFF = datetime(2017, 12, 4, tzinfo=UTC)
UTC_US = pl.Datetime("us", "UTC")


def at(day: int, hour: int = 0) -> datetime:
    return datetime(2017, 12, day, hour, tzinfo=UTC)


def tiny_lake() -> LakeFrames:
    """Customer 1 orders product 100 on Dec 1, product 200 exactly at the cutoff and product 300
    on Dec 8; customer 2 only orders (product 100) after the cutoff. Customer 1 views product 400
    on Dec 2 (60 s) and product 500 at the cutoff."""
    orders = pl.DataFrame(
        {
            "order_id": [1, 2, 3, 4],
            "customer_id": [1, 1, 1, 2],
            "store_id": [7, 7, 7, 7],
            "channel": ["store"] * 4,
            "ordered_at": [at(1), at(4), at(8), at(5)],
            "modified_at": [at(9)] * 4,
        },
        schema_overrides={"ordered_at": UTC_US, "modified_at": UTC_US},
    )
    lines = pl.DataFrame(
        {
            "order_id": [1, 2, 3, 4],
            "line_number": [1, 1, 1, 1],
            "product_id": [100, 200, 300, 100],
            "quantity": [2, 1, 30, 1],
            "amount": [4.0, 1.5, 60.0, 2.0],
            "modified_at": [at(9)] * 4,
        },
        schema_overrides={"modified_at": UTC_US},
    )
    products = pl.DataFrame(
        {
            "product_id": [100, 200, 300, 400, 500, 600],
            "name": ["whole milk", "rye bread", "oat milk", "tea", "coffee", "new cheese"],
            "department": ["dairy", "bakery", "dairy", "drinks", "drinks", "dairy"],
            "category": ["milk", "bread", "milk", "tea", "coffee", "cheese"],
            "brand": ["National"] * 6,
            "package_size": pl.Series([None] * 6, dtype=pl.String),
            "price": [2.0, 1.5, 2.0, 3.0, 5.0, 4.0],
            "introduced_at": [at(1), at(1), at(1), at(1), at(1), at(4)],
            "discontinued": [False, False, False, False, True, False],
            "modified_at": [at(9)] * 6,
        },
        schema_overrides={"introduced_at": UTC_US, "modified_at": UTC_US},
    )
    customers = pl.DataFrame(
        {
            "customer_id": [1, 2],
            "age_band": ["35-44", "65+"],
            "income_band": ["50-74K", None],
            "household_size": [2, 1],
            "created_at": [at(1), at(4)],
        },
        schema_overrides={"created_at": UTC_US},
    )
    views = pl.DataFrame(
        {
            "customer_id": [1, 1, None],
            "product_id": [400, 500, 400],
            "viewed_at": [at(2), at(4), at(2)],
            "dwell_seconds": [60.0, 500.0, 30.0],
        },
        schema_overrides={"viewed_at": UTC_US, "customer_id": pl.Int64},
    )
    images = pl.DataFrame(schema={"product_id": pl.Int64, "features": pl.List(pl.Float32)})
    return LakeFrames(products, orders, lines, customers, views, images)


def events_before(lake: LakeFrames, cutoff: datetime, **weights) -> pl.DataFrame:
    """The weighted purchases and views before the cutoff, as the customer tower reads them."""
    return history_events(
        before(purchases(lake), cutoff), before(lake.product_views, cutoff, "viewed_at"), **weights
    ).sort("at")


def test_history_events_stop_strictly_before_the_cutoff():
    rows = events_before(tiny_lake(), CUTOFF)
    assert rows.select("product_id", "kind", "weight").rows() == [
        (100, "purchase", 2.0),
        (400, "product_view", 0.5),
    ]


def test_purchase_weight_can_be_the_amount_and_bulk_quantities_are_capped():
    lake = tiny_lake()
    by_amount = events_before(lake, at(9), purchase_weight="amount").filter(kind="purchase")
    by_quantity = events_before(lake, at(9)).filter(kind="purchase")
    assert sorted(by_amount["weight"].to_list()) == [1.5, 2.0, 4.0, 60.0]
    assert sorted(by_quantity["weight"].to_list()) == [1.0, 1.0, 2.0, 10.0]


def test_temporal_split_tests_on_the_7_days_from_the_cutoff():
    split = temporal_split(purchases(tiny_lake()), CUTOFF)
    assert split.train["order_id"].to_list() == [1]
    assert sorted(split.test["order_id"].to_list()) == [2, 3, 4]


def test_decayed_history_halves_an_order_per_half_life_and_ignores_the_cutoff():
    history = decayed_history(purchases(tiny_lake()), CUTOFF, half_life_days=3.0, max_products=5)
    assert history.rows() == [(1, 100, 0.5, 0)]


def test_customer_snapshot_pools_only_products_bought_before_its_time():
    lake = tiny_lake()
    vocab = build_vocabulary(catalogue(lake, CUTOFF), lake.customers, customer_buckets=16)
    inputs = encode_customers(
        vocab, purchases(lake), lake.customers, np.array([1, 2]), CUTOFF, 3, 28.0
    )
    product_100 = vocab.product_ids.index(100) + 1
    assert inputs.history.tolist() == [[product_100, 0, 0], [0, 0, 0]]
    assert inputs.history_weight.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert inputs.activity[:, 2].tolist() == [1.0, 0.0]


def test_catalogue_at_the_cutoff_leaves_out_later_and_discontinued_products():
    lake = tiny_lake()
    # product 500 was discontinued on Dec 2, before the cutoff
    discontinued_early = lake.products.with_columns(
        pl.when(pl.col("product_id") == 500)
        .then(at(2))
        .otherwise("modified_at")
        .alias("modified_at")
    )
    early = replace(lake, products=discontinued_early)
    assert catalogue(early, CUTOFF)["product_id"].to_list() == [100, 200, 300, 400]


def test_a_product_discontinued_after_the_cutoff_was_on_sale_at_it():
    # product 500 is discontinued, last changed on Dec 9: after the cutoff of Dec 4
    assert catalogue(tiny_lake(), CUTOFF)["product_id"].to_list() == [100, 200, 300, 400, 500]
    assert 500 not in catalogue(tiny_lake(), at(10))["product_id"].to_list()
    # recommendations made now leave it out whenever it was discontinued
    assert catalogue(tiny_lake(), CUTOFF, current=True)["product_id"].to_list() == [
        100,
        200,
        300,
        400,
    ]


def test_segments_are_new_light_or_heavy_at_the_cutoff():
    segments = customer_segments(purchases(tiny_lake()), [1, 2], CUTOFF)
    assert segments.rows() == [(1, "light"), (2, "new")]


def test_read_lake_reads_each_table_at_its_pinned_version(tmp_path):
    lake = tiny_lake()
    for name in LakeFrames.__dataclass_fields__:
        getattr(lake, name).write_delta(str(tmp_path / name))
    lake.orders.head(1).write_delta(str(tmp_path / "orders"), mode="overwrite")
    assert read_lake(str(tmp_path)).orders.height == 1
    assert read_lake(str(tmp_path), {"orders": 0}).orders.height == 4


def test_a_missing_product_view_table_reads_as_empty(tmp_path):
    lake = tiny_lake()
    for name in ("products", "orders", "order_lines", "customers", "product_image_features"):
        getattr(lake, name).write_delta(str(tmp_path / name))
    frames = read_lake(str(tmp_path))
    assert frames.product_views.height == 0
    assert frames.product_views.schema["dwell_seconds"] == pl.Float64


def test_customer_history_pools_quantities_and_product_views_before_its_time():
    lake = tiny_lake()
    vocab = build_vocabulary(catalogue(lake, CUTOFF), lake.customers, customer_buckets=16)
    inputs = encode_customers(
        vocab,
        purchases(lake),
        lake.customers,
        np.array([1, 2]),
        CUTOFF,
        3,
        28.0,
        lake.product_views,
        purchase_weight="quantity",
        seconds_per_purchase=120.0,
    )
    # 2 units of product 100 three days before the cutoff, 60 s on product 400 two days before;
    # the view of product 500 at the cutoff is not seen
    bought, viewed = 2 * 0.5 ** (3 / 28), 0.5 * 0.5 ** (2 / 28)
    position = {p: vocab.product_ids.index(p) + 1 for p in (100, 400)}
    assert inputs.history.tolist() == [[position[100], position[400], 0], [0, 0, 0]]
    np.testing.assert_allclose(
        inputs.history_weight[0], [bought / (bought + viewed), viewed / (bought + viewed), 0.0]
    )


def test_history_events_weigh_orders_and_leave_views_out_at_zero_seconds():
    lake = tiny_lake()
    events = history_events(
        purchases(lake), lake.product_views, purchase_weight="orders", seconds_per_purchase=0.0
    )
    assert sorted(events.select("product_id", "weight").rows()) == [
        (100, 1.0),
        (100, 1.0),
        (200, 1.0),
        (300, 1.0),
    ]
    with pytest.raises(ValueError, match="purchase_weight must be one of"):
        history_events(purchases(lake), purchase_weight="units")


def test_a_product_the_model_does_not_know_takes_no_history_slot():
    lake = tiny_lake()
    vocab = build_vocabulary(catalogue(lake, CUTOFF), lake.customers, customer_buckets=16)
    assert 600 not in vocab.product_ids  # launched at the cutoff, after the model's data
    bought = pl.DataFrame(
        {
            "customer_id": [1, 1, 1, 1],
            "order_id": [5, 6, 7, 8],
            "product_id": [600, 600, 600, 100],
            "at": [at(6), at(7), at(8), at(5)],
            "quantity": [1, 1, 1, 1],
            "amount": [4.0, 4.0, 4.0, 2.0],
        },
        schema_overrides={"at": UTC_US},
    )

    inputs = encode_customers(vocab, bought, lake.customers, np.array([1]), at(10), 1, 28.0)

    assert inputs.history.tolist() == [[vocab.product_ids.index(100) + 1]]

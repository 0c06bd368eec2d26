"""The offline evaluation of real-time recommendations: which views count and how they score."""

from datetime import UTC, datetime

import numpy as np
import polars as pl

from contoso_recs.recommender.data import LakeFrames
from contoso_recs.recommender.online_evaluation import (
    Views,
    basket_views,
    co_purchase_knn_hit_rate,
    next_views,
    popularity_hit_rate,
    scorer_hit_rate,
)
from contoso_recs.serving.bundle import Policy, read_bundle
from contoso_recs_tests.serving_fixtures import write_small_bundle

CUTOFF = datetime(2026, 11, 23, tzinfo=UTC)


def at(day: int, hour: int = 10) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=UTC)


def frames(views: list[tuple], orders: list[tuple], lines: list[tuple]) -> LakeFrames:
    empty = pl.DataFrame()
    return LakeFrames(
        products=empty,
        orders=pl.DataFrame(orders, schema=["order_id", "customer_id", "ordered_at"], orient="row"),
        order_lines=pl.DataFrame(
            lines, schema=["order_id", "product_id", "quantity", "amount"], orient="row"
        ),
        customers=empty,
        product_views=pl.DataFrame(
            views, schema=["session_id", "customer_id", "product_id", "viewed_at"], orient="row"
        ),
        product_image_features=empty,
    )


def test_the_next_different_product_of_a_session_in_the_test_week_is_the_target():
    views = [
        ("s1", 1, 10, at(24, 10)),
        ("s1", 1, 10, at(24, 11)),  # the same product again: not a next view
        ("s1", 1, 20, at(24, 12)),
        ("s1", 1, 30, at(24, 13)),
        ("s2", None, 40, at(25)),
        ("s2", None, 50, at(26)),
        ("s3", 2, 60, at(20)),  # before the cutoff
        ("s3", 2, 70, at(21)),
    ]

    found = next_views(frames(views, [], []), CUTOFF)

    targets = [sorted(t) for t in found.targets]
    pairs = sorted(zip(found.customer_ids, found.product_ids, targets, strict=True), key=str)
    assert pairs == sorted(
        [("1", "10", ["20"]), ("1", "20", ["30"]), (None, "40", ["50"])], key=str
    )


def test_one_product_of_each_basket_is_viewed_and_the_others_are_targets():
    orders = [(1, 7, at(24)), (2, 8, at(25)), (3, 7, at(10))]
    lines = [(1, 10, 1, 1.0), (1, 20, 1, 1.0), (1, 30, 2, 2.0), (2, 40, 1, 1.0), (3, 50, 1, 1.0)]

    found = basket_views(frames([], orders, lines), CUTOFF)

    assert found.customer_ids == ["7"]  # order 2 has one product, order 3 is before the cutoff
    assert found.targets[0] | {found.product_ids[0]} == {"10", "20", "30"}
    assert found.product_ids[0] not in found.targets[0]


def test_co_purchase_knn_recommends_what_the_same_customers_bought(tmp_path):
    bundle = read_bundle(write_small_bundle(tmp_path))
    # Before the cutoff: customers 1 and 2 bought p1 and p3, customer 3 bought p1 and p2.
    orders = [(1, 1, at(10)), (2, 2, at(11)), (3, 3, at(12))]
    lines = [
        (1, "p1", 1, 1.0),
        (1, "p3", 1, 1.0),
        (2, "p1", 1, 1.0),
        (2, "p3", 1, 1.0),
        (3, "p1", 1, 1.0),
        (3, "p2", 1, 1.0),
    ]
    lake = frames([], orders, lines)
    views = Views([None, None], ["p3", "p4"], [{"p1"}, {"p1"}])

    # p3's only neighbour is p1 (a hit); p4 was never bought, so it has none (a miss).
    assert co_purchase_knn_hit_rate(bundle, lake, CUTOFF, views) == 0.5


def test_the_scorer_and_popularity_hit_rates_count_the_top_five(tmp_path):
    bundle = read_bundle(write_small_bundle(tmp_path))
    views = Views(["c1", None], ["p1", "p1"], [{"p5"}, {"p4"}])

    # c1 viewing p1 without repeats: p2, p3, p4 (p5 bought before) -> miss; anonymous viewing
    # p1: p2, p5, p3, p4 -> hit.
    assert scorer_hit_rate(bundle, Policy(), views) == 0.5
    assert scorer_hit_rate(bundle, Policy(allow_repeats=True), views) == 1.0
    # Popular minus the viewed product: p4, p2, p3, p5 (a hit) and p4, p3, p1, p5 (a miss: the
    # viewed product is never shown, even when it is the one bought).
    popular = Views([None, None], ["p1", "p2"], [{"p5"}, {"p2"}])
    assert popularity_hit_rate(bundle, popular) == 0.5
    assert np.isclose(scorer_hit_rate(bundle, Policy(), Views([], [], [])), 0.0)

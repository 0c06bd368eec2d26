"""The weekly top-5 rules, on a hand-built lake and a really trained tiny model."""

import copy
from dataclasses import replace
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal

from contoso_recs.recommender import evaluate
from contoso_recs.recommender.blend import SHIPPED_BLENDS, BlendConfig
from contoso_recs.recommender.data import LakeFrames, before, purchases
from contoso_recs.recommender.encoding import product_positions
from contoso_recs.recommender.train import recent_buyer_buckets, train
from contoso_recs.recommender.weekly import (
    BOUGHT_BEFORE,
    IN_THE_MAILER,
    IN_YOUR_CATEGORIES,
    LIKE_YOU,
    POPULAR_NOW,
    REASONS,
    WeeklyScorer,
    eligible_customers,
    weekly_recommendations,
    weekly_table,
)
from contoso_recs_tests.test_recommender_training import CUTOFF, TINY, UTC_US, synthetic_lake

WEEK = CUTOFF  # a Monday: the lake's orders all fall before it
COLD = 40  # a profile, no order
LATE_PROFILE = 41  # a profile created during the week
DISCONTINUED, NOT_YET_ON_SALE = 11, 12


def weekly_lake() -> LakeFrames:
    """The two-taste lake plus a discontinued product, one launched during the week, a customer
    with a profile and no order, and one whose profile is created during the week."""
    frames = synthetic_lake()
    extra_products = pl.DataFrame(
        {
            "product_id": [DISCONTINUED, NOT_YET_ON_SALE],
            "name": ["dairy item old", "dairy item new"],
            "department": ["dairy", "dairy"],
            "category": ["milk", "milk"],
            "brand": ["National", "National"],
            "price": [1.5, 1.5],
            "introduced_at": pl.Series([None, WEEK + timedelta(days=2)], dtype=UTC_US),
            "discontinued": [True, False],
            # discontinued a day into the week (before the table is written, or rewritten);
            # launched two days into it
            "modified_at": pl.Series(
                [WEEK + timedelta(days=1), WEEK + timedelta(days=2)], dtype=UTC_US
            ),
        }
    )
    # The discontinued product was the dairy customers' favourite until it left the catalogue.
    lines = frames.order_lines.with_columns(
        pl.when((pl.col("product_id") == 1) & (pl.col("line_number") == 1))
        .then(DISCONTINUED)
        .otherwise(pl.col("product_id"))
        .alias("product_id")
    )
    customers = pl.concat(
        [
            frames.customers,
            pl.DataFrame(
                {
                    "customer_id": [COLD, LATE_PROFILE],
                    "age_band": ["35-44", "35-44"],
                    "income_band": ["50-74K", "50-74K"],
                    "household_size": [2, 2],
                    "created_at": pl.Series(
                        [WEEK - timedelta(days=3), WEEK + timedelta(days=1)], dtype=UTC_US
                    ),
                }
            ),
        ]
    )
    return replace(
        frames,
        products=pl.concat([frames.products, extra_products]),
        order_lines=lines,
        customers=customers,
    )


@pytest.fixture(scope="module")
def lake() -> LakeFrames:
    return weekly_lake()


@pytest.fixture(scope="module")
def trained(lake):
    # 4 epochs: with the learning rates falling over the epochs, two passes over this tiny
    # world no longer learn a customer's viewed taste well enough to fill a list with it
    return train(lake, WEEK - timedelta(days=7), replace(TINY, epochs=4))


def table(lake, trained, blend: BlendConfig = SHIPPED_BLENDS["A"]) -> pl.DataFrame:
    return weekly_recommendations(lake, trained, WEEK, blend, "v1", chunk_customers=16)


def bought_before_week(lake: LakeFrames) -> pl.DataFrame:
    return (
        lake.order_lines.join(lake.orders, on="order_id")
        .filter(pl.col("ordered_at") < WEEK)
        .select("customer_id", "product_id")
        .unique()
    )


def test_every_customer_known_before_the_week_gets_exactly_5_distinct_products(lake, trained):
    rows = table(lake, trained)

    expected = set(range(40)) | {COLD}
    assert set(eligible_customers(lake, WEEK).tolist()) == expected
    per_customer = rows.group_by("customer_id").agg(
        pl.len().alias("rows"),
        pl.col("product_id").n_unique().alias("products"),
        pl.col("rank").sort().alias("ranks"),
    )
    assert set(per_customer["customer_id"]) == expected
    assert per_customer["rows"].unique().to_list() == [5]
    assert per_customer["products"].unique().to_list() == [5]
    assert all(ranks.to_list() == [1, 2, 3, 4, 5] for ranks in per_customer["ranks"])


def test_no_discontinued_product_nor_one_not_yet_on_sale_is_recommended(lake, trained):
    for blend in SHIPPED_BLENDS.values():
        shown = set(table(lake, trained, blend)["product_id"])
        assert DISCONTINUED not in shown
        assert NOT_YET_ON_SALE not in shown


def test_already_bought_products_appear_only_when_the_blend_allows_repeats(lake, trained):
    owned = bought_before_week(lake)
    discovery = table(lake, trained, SHIPPED_BLENDS["B"])
    any_product = table(lake, trained, SHIPPED_BLENDS["A"])

    assert discovery.join(owned, on=["customer_id", "product_id"]).is_empty()
    repeats = any_product.join(owned, on=["customer_id", "product_id"])
    assert repeats.height > 0
    assert set(repeats["reason"]) == {BOUGHT_BEFORE}
    others = any_product.join(owned, on=["customer_id", "product_id"], how="anti")
    assert BOUGHT_BEFORE not in set(others["reason"])


def test_a_customer_without_purchases_gets_products_from_profile_or_popularity(lake, trained):
    rows = table(lake, trained).filter(pl.col("customer_id") == COLD)

    assert rows.height == 5
    assert set(rows["reason"]) <= {LIKE_YOU, POPULAR_NOW}


def test_rows_carry_name_price_image_and_model_version(lake, trained):
    # Pictures for the dairy products only: bakery rows have no image reference.
    images = pl.DataFrame(
        {
            "product_id": [1, 2, 3, 4, 5],
            "image_ref": [f"product-images/{p}.png" for p in range(1, 6)],
        }
    )
    rows = weekly_recommendations(lake, trained, WEEK, SHIPPED_BLENDS["A"], "v1", image_refs=images)

    assert set(rows["reason"]) <= set(REASONS)
    assert rows["model_version"].unique().to_list() == ["v1"]
    assert rows["week"].unique().to_list() == [WEEK.date()]
    named = rows.join(lake.products.select("product_id", "name", "price"), on="product_id")
    assert (named["product_name"] == named["name"]).all()
    assert (named["price"] == named["price_right"]).all()
    dairy = rows.filter(pl.col("product_id") <= 5)
    assert dairy.height > 0
    assert (
        dairy["image_ref"] == "product-images/" + dairy["product_id"].cast(pl.String) + ".png"
    ).all()
    assert rows.filter(pl.col("product_id") > 5)["image_ref"].is_null().all()


@pytest.mark.parametrize("task", ["A", "B"])
def test_orders_from_the_week_on_change_nothing_and_the_table_is_reproducible(lake, trained, task):
    late_order = pl.DataFrame(
        {
            "order_id": [10_000],
            "customer_id": [0],
            "store_id": [1],
            "channel": ["store"],
            "ordered_at": pl.Series([WEEK], dtype=UTC_US),
            "modified_at": pl.Series([WEEK], dtype=UTC_US),
        }
    )
    late_lines = pl.DataFrame(
        {
            "order_id": [10_000] * 5,
            "line_number": [1, 2, 3, 4, 5],
            "product_id": [6, 7, 8, 9, 10],
            "quantity": [3] * 5,
            "amount": [2.0] * 5,
            "modified_at": pl.Series([WEEK] * 5, dtype=UTC_US),
        }
    )
    later = replace(
        lake,
        orders=pl.concat([lake.orders, late_order]),
        order_lines=pl.concat([lake.order_lines, late_lines]),
    )

    first = table(lake, trained, SHIPPED_BLENDS[task])
    assert table(lake, trained, SHIPPED_BLENDS[task]).equals(first)
    assert table(later, trained, SHIPPED_BLENDS[task]).equals(first)


def test_a_catalogue_too_small_for_the_repurchase_policy_is_a_clear_error(lake, trained):
    small = replace(lake, products=lake.products.filter(pl.col("product_id") <= 6))

    with pytest.raises(ValueError, match="fewer than 5 products may be shown"):
        table(small, trained, SHIPPED_BLENDS["B"])


def test_without_a_promoted_model_every_customer_still_gets_5_from_the_other_signals(lake):
    rows = weekly_recommendations(lake, None, WEEK, SHIPPED_BLENDS["A"], "none")

    per_customer = rows.group_by("customer_id").agg(pl.col("product_id").n_unique())
    assert set(per_customer["customer_id"]) == set(range(40)) | {COLD}
    assert per_customer["product_id"].unique().to_list() == [5]
    assert rows["model_version"].unique().to_list() == ["none"]
    assert LIKE_YOU not in set(rows["reason"])  # nothing comes from a profile without a model
    owned = bought_before_week(lake)
    assert set(rows.join(owned, on=["customer_id", "product_id"])["reason"]) == {BOUGHT_BEFORE}
    assert DISCONTINUED not in set(rows["product_id"])


def test_product_views_before_the_week_steer_a_customer_without_orders(lake, trained):
    bakery = set(range(6, 11))
    views = pl.DataFrame(
        {
            "customer_id": [COLD] * 5,
            "product_id": sorted(bakery),
            "viewed_at": [WEEK - timedelta(days=1, hours=h) for h in range(5)],
            "dwell_seconds": [120.0] * 5,
        },
        schema_overrides={"viewed_at": UTC_US},
    )
    model_only = BlendConfig(allow_repeats=False, repeat_weight=0.0)

    def bakery_shown(frames: LakeFrames) -> int:
        rows = table(frames, trained, model_only).filter(pl.col("customer_id") == COLD)
        return len(set(rows["product_id"]) & bakery)

    assert bakery_shown(lake) < bakery_shown(replace(lake, product_views=views)) == 5


def test_als_factors_are_fit_only_for_a_rule_that_weighs_them(lake, trained):
    assert SHIPPED_BLENDS["A"].als_weight == 0 and SHIPPED_BLENDS["B"].als_weight > 0
    for task, fitted in (("A", False), ("B", True)):
        scorer = WeeklyScorer.prepare(lake, trained, WEEK, SHIPPED_BLENDS[task])
        assert (scorer.signals.als is not None) is fitted, task


def test_a_product_carried_by_als_preference_reads_popular_with_customers_like_you(lake, trained):
    by_als = BlendConfig(allow_repeats=False, repeat_weight=0.0, model_weight=0.0, als_weight=1.0)
    rows = table(lake, trained, by_als)

    with_orders = rows.join(
        bought_before_week(lake).select("customer_id").unique(), on="customer_id"
    )
    # each customer's first product has the highest ALS preference of their candidates, so the
    # ALS term lifts it most (a product below their typical preference is lifted by nothing)
    first = with_orders.filter(pl.col("rank") == 1)
    assert first.height > 10
    assert set(first["reason"]) == {LIKE_YOU}


def test_customers_asked_for_in_any_order_or_twice_get_their_own_five_once(lake, trained):
    blend = SHIPPED_BLENDS["B"]  # repeats off: a customer mixed up with another would show
    ordered = WeeklyScorer.prepare(lake, trained, WEEK, blend, customer_ids=np.array([3, 25, 30]))
    shuffled = WeeklyScorer.prepare(
        lake, trained, WEEK, blend, customer_ids=np.array([30, 3, 25, 3])
    )
    expected = weekly_table(ordered, lake, "v1")

    assert_frame_equal(weekly_table(shuffled, lake, "v1"), expected)
    assert expected.join(bought_before_week(lake), on=["customer_id", "product_id"]).is_empty()
    # a batch of rows in any order gives the same rows, in customer order
    assert_frame_equal(shuffled.score(np.array([2, 0, 1])), shuffled.score(np.arange(3)))
    empty = WeeklyScorer.prepare(lake, trained, WEEK, blend, customer_ids=np.array([], "i8"))
    assert weekly_table(empty, lake, "v1").is_empty()


def test_a_term_the_rule_does_not_weigh_never_names_the_reason(lake):
    assert SHIPPED_BLENDS["A"].category_weight == SHIPPED_BLENDS["B"].category_weight == 0
    for blend in SHIPPED_BLENDS.values():
        rows = weekly_recommendations(lake, None, WEEK, blend, "none")
        assert IN_YOUR_CATEGORIES not in set(rows["reason"])
    # with no order before the week, nothing but the week's best sellers carries a product
    late = replace(lake, orders=lake.orders.with_columns(pl.col("ordered_at") + timedelta(days=60)))
    rows = weekly_recommendations(late, None, WEEK, SHIPPED_BLENDS["A"], "none")
    assert set(rows["reason"]) == {POPULAR_NOW}


def plan_for(week, product: int, share: float) -> pl.DataFrame:
    """A promotion plan featuring one product in the week from `week`, written a week before."""
    return pl.DataFrame(
        {
            "week_start": [week.date()],
            "product_id": [product],
            "mailer_share": [share],
            "display_share": [0.0],
            "modified_at": pl.Series([week - timedelta(days=7)], dtype=UTC_US),
        }
    )


def least_bought(lake: LakeFrames) -> int:
    """The product on sale fewest customers bought before the week."""
    counts = bought_before_week(lake).group_by("product_id").len()
    on_sale = lake.products.filter(~pl.col("discontinued") & pl.col("introduced_at").is_null())
    return on_sale.join(counts, on="product_id", how="left").sort("len", nulls_last=False)[
        "product_id"
    ][0]


@pytest.mark.parametrize(("share", "named"), [(0.8, True), (0.3, False)])
def test_the_weeks_mailer_lifts_a_product_and_names_it_when_most_stores_feature_it(
    lake, trained, share, named
):
    featured = least_bought(lake)
    by_mailer = BlendConfig(
        allow_repeats=False, repeat_weight=0.0, model_weight=0.0, popularity_weight=0.01,
        mailer_weight=10.0,
    )  # fmt: skip
    rows = table(replace(lake, promotions=plan_for(WEEK, featured, share)), trained, by_mailer)

    first = rows.filter(pl.col("rank") == 1)
    not_owning = first.join(
        bought_before_week(lake).filter(pl.col("product_id") == featured),
        on="customer_id",
        how="anti",
    )
    assert not_owning.height > 10
    assert set(not_owning["product_id"]) == {featured}
    assert (set(not_owning["reason"]) == {IN_THE_MAILER}) is named
    # the plan of another week changes nothing
    other_week = replace(lake, promotions=plan_for(WEEK + timedelta(days=7), featured, share))
    assert_frame_equal(table(other_week, trained, by_mailer), table(lake, trained, by_mailer))


def test_the_evaluation_reads_the_mailer_of_the_week_it_judges(lake, trained):
    held_out = WEEK - timedelta(days=7)
    featured = least_bought(lake)
    with_plan = replace(lake, promotions=plan_for(held_out, featured, 0.8))
    bought = purchases(with_plan)
    test = evaluate.holdout(with_plan, bought, held_out)

    _, pool = evaluate.model_pool(trained, with_plan, bought, test)

    mailed = pool.features["mailer"] > 0
    assert mailed.any()
    assert set(test.index.product_ids[pool.positions[mailed]]) == {featured}
    assert (pool.features["mailer"][mailed] == np.float32(0.8)).all()


@pytest.mark.parametrize("k", [2, 3, 5])
def test_task_b_lists_show_as_many_categories_as_the_customer_may_be_shown(lake, trained, k):
    category = lake.products.select("product_id", "category")
    on_sale = lake.products.filter(~pl.col("discontinued") & pl.col("introduced_at").is_null())
    showable = (
        pl.DataFrame({"customer_id": eligible_customers(lake, WEEK)})
        .join(on_sale.select("product_id"), how="cross")
        .join(bought_before_week(lake), on=["customer_id", "product_id"], how="anti")
        .join(category, on="product_id")
        .group_by("customer_id")
        .agg(pl.col("category").n_unique().alias("may_be_shown"))
    )

    def categories_shown(blend: BlendConfig) -> pl.DataFrame:
        rows = weekly_recommendations(lake, trained, WEEK, blend, "v1", k=k)
        return (
            rows.join(category, on="product_id")
            .group_by("customer_id")
            .agg(pl.col("category").n_unique().alias("shown"))
            .join(showable, on="customer_id")
            .with_columns(most=pl.col("may_be_shown").clip(upper_bound=k))
        )

    limited = categories_shown(SHIPPED_BLENDS["B"])  # at most one product of a category
    assert limited.height > 10
    assert (limited["shown"] == limited["most"]).all()
    unlimited = categories_shown(replace(SHIPPED_BLENDS["B"], max_per_category=0))
    if k < 5:  # with room for fewer than every category, the best products repeat one
        assert (unlimited["shown"] < unlimited["most"]).any()


def test_the_weekly_table_ranks_by_the_models_recent_popularity_term_too(lake, trained):
    """A model whose term lifts one bucket of recent buyers far above the rest shows that
    bucket's products to every customer."""
    model_only = BlendConfig(allow_repeats=True, repeat_weight=0.0)
    buckets = recent_buyer_buckets(
        trained.vocab,
        before(purchases(lake), WEEK),
        WEEK,
        trained.config.recent_popularity_days,
    )
    lifted_bucket = int(buckets[product_positions(trained.vocab, np.array([4]))][0])
    lifted = {
        int(product)
        for product, bucket in zip(trained.vocab.product_ids, buckets[1:], strict=True)
        if bucket == lifted_bucket and product != DISCONTINUED
    }
    assert 4 in lifted and len(lifted) < 5
    boosted = copy.deepcopy(trained)
    with torch.no_grad():
        boosted.model.popularity_bias[lifted_bucket] = 1000.0

    def showing_all_lifted(model) -> int:
        lists = table(lake, model, model_only).group_by("customer_id").agg("product_id")
        return sum(lifted <= set(products) for products in lists["product_id"].to_list())

    customers = table(lake, trained, model_only)["customer_id"].n_unique()
    assert showing_all_lifted(trained) < customers == showing_all_lifted(boosted)
    # what lifted them is what sells now, not the customer's taste
    reasons = (
        table(lake, boosted, model_only)
        .filter(pl.col("product_id").is_in(list(lifted)) & (pl.col("reason") != BOUGHT_BEFORE))
        .get_column("reason")
    )
    assert len(reasons) > 0 and set(reasons) == {POPULAR_NOW}

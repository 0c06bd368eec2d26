"""The blend's further signals: co-purchases, repeat habits, tuning over several weeks."""

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from contoso_recs.recommender import baselines, blend, evaluate
from contoso_recs.recommender.blend import (
    BlendConfig,
    Signals,
    ValidationWeek,
    candidates,
    co_purchase_scores,
    recommend,
    repeat_habits,
    tune_weeks,
)
from contoso_recs.recommender.metrics import ndcg
from contoso_recs.recommender.ranking import ProductIndex, exclusion_matrix, owned_sets

CUTOFF = datetime(2017, 12, 4, tzinfo=UTC)
UTC_US = pl.Datetime("us", "UTC")


def purchases_of(rows: list[tuple[int, int, int, int]]) -> pl.DataFrame:
    """(customer, order, product, days before the cutoff) rows as a purchases frame."""
    return pl.DataFrame(
        {
            "customer_id": [r[0] for r in rows],
            "order_id": [r[1] for r in rows],
            "product_id": [r[2] for r in rows],
            "at": [CUTOFF - timedelta(days=r[3]) for r in rows],
            "quantity": [1] * len(rows),
            "amount": [1.0] * len(rows),
        },
        schema_overrides={"at": UTC_US},
    )


# Customers 1 and 2 bought products 10 and 20; customer 3 bought 10 and 30.
CO_BOUGHT = purchases_of([(1, 1, 10, 3), (1, 1, 20, 3), (2, 2, 10, 3), (2, 2, 20, 3),
                          (3, 3, 10, 3), (3, 3, 30, 3)])  # fmt: skip
PRODUCTS = ProductIndex.of([10, 20, 30, 40])


def test_co_purchase_score_is_the_cosine_over_customers():
    profile = sp.csr_matrix(np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32))  # owns 10
    score = baselines.co_purchase_scorer(CO_BOUGHT, profile, PRODUCTS, smoothing=0.0)
    # buyers: 10 -> 3, 20 -> 2, 30 -> 1; 10 and 20 share 2 buyers, 10 and 30 one
    expected = [1.0, 2 / math.sqrt(3 * 2), 1 / math.sqrt(3 * 1), -math.inf]
    assert score(np.array([0])).ravel().tolist() == pytest.approx(expected)


def test_co_purchase_through_products_equals_through_customers():
    profile = sp.csr_matrix(
        np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0], [0.2, 0.0, 0.3, 0.0]], "f4")
    )
    rows = np.array([0, 1, 2])

    by_customers = baselines.co_purchase_scorer(CO_BOUGHT, profile, PRODUCTS, 1.0, via="customers")
    by_products = baselines.co_purchase_scorer(CO_BOUGHT, profile, PRODUCTS, 1.0, via="products")

    np.testing.assert_allclose(by_products(rows), by_customers(rows), rtol=1e-6)


def test_co_purchase_smoothing_damps_products_with_few_buyers():
    profile = sp.csr_matrix(np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32))
    score = baselines.co_purchase_scorer(CO_BOUGHT, profile, PRODUCTS, smoothing=1.0)
    row = score(np.array([0])).ravel()
    assert row[1] == pytest.approx(2 / math.sqrt(4 * 3))
    assert row[2] == pytest.approx(1 / math.sqrt(4 * 2))


def test_co_purchase_scores_keep_the_best_per_customer_with_profiles_summing_to_one():
    profile = sp.csr_matrix(np.array([[2.0, 0.0, 0.0, 0.0]], dtype=np.float32))
    kept = co_purchase_scores(CO_BOUGHT, profile, PRODUCTS, keep=2).toarray().ravel()
    # the profile is scaled to 1 first, so the owned product 10 (3 buyers, smoothing 20, target
    # exponent 0.65) scores 3 / (23^0.5 * 23^0.65)
    assert np.flatnonzero(kept).tolist() == [0, 1]
    assert kept[0] == pytest.approx(3 / 23**1.15)


def test_a_larger_target_exponent_favours_products_fewer_customers_buy():
    profile = sp.csr_matrix(np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32))
    score = baselines.co_purchase_scorer(CO_BOUGHT, profile, PRODUCTS, 0.0, target_exponent=1.0)
    row = score(np.array([0])).ravel()
    assert row[1] == pytest.approx(2 / (math.sqrt(3) * 2))  # 20: 2 buyers
    assert row[2] == pytest.approx(1 / (math.sqrt(3) * 1))  # 30: 1 buyer, now first


def test_item_knn_recommends_what_similar_customers_bought():
    lists = baselines.item_knn(
        CO_BOUGHT, CUTOFF, np.array([3]), PRODUCTS, 2, exclude=sp.csr_matrix([[1, 0, 1, 0]])
    )
    assert lists == {3: [20]}  # 40 was never bought, so it is never shown


def test_repeat_habits_due_peaks_at_the_usual_interval():
    # customer 1 buys 10 every 10 days (last 10 days ago) and 20 once; customer 2 buys 10 once
    bought = purchases_of([(1, 1, 10, 30), (1, 2, 10, 20), (1, 3, 10, 10), (1, 3, 20, 10),
                           (2, 4, 10, 5)])  # fmt: skip
    habits = repeat_habits(bought, CUTOFF, np.array([1, 2]), PRODUCTS)
    assert habits.orders.toarray()[0].tolist() == [3, 1, 0, 0]
    assert habits.due.toarray()[0, 0] == pytest.approx(1.0)  # 10 days since, every 10 days
    assert habits.due.toarray()[0, 1] == 0.0  # one order: no interval
    assert habits.due.toarray()[1, 0] == 0.0
    # product 10: 1 of 2 buyers repeats; 20: 0 of 1; store-wide 1 of 3, shrunk with prior 10
    overall = 1 / 3
    assert habits.product_repeat_rate[0] == pytest.approx((1 + 10 * overall) / (2 + 10))
    assert habits.product_repeat_rate[1] == pytest.approx((0 + 10 * overall) / (1 + 10))
    assert habits.product_repeat_rate[2] == pytest.approx(overall)  # never bought


def test_validation_ndcg_matches_the_metric_on_the_recommended_lists():
    rng = np.random.default_rng(0)
    products = ProductIndex.of(range(1, 31))
    customers = np.arange(1, 9)
    rows = [(int(c), int(c), int(p), 3) for c in customers for p in rng.choice(30, 4) + 1]
    bought = purchases_of(rows)
    scores = rng.random((len(customers), len(products))).astype(np.float32)
    pool = candidates(scores, bought, CUTOFF, customers, products)
    targets = {int(c): {int(p) for p in rng.choice(30, 3) + 1} for c in customers[:6]}
    targets[99] = {1}  # a customer the pool does not hold counts as a miss
    config = BlendConfig(allow_repeats=False, popularity_weight=0.3, co_purchase_weight=2.0)
    lists = recommend(pool, config, 5)
    expected = np.mean([ndcg(lists.get(c, []), t) for c, t in targets.items()])
    assert ValidationWeek.of(pool, targets).ndcg(config) == pytest.approx(expected)


def test_tuning_over_two_weeks_finds_the_signal_both_weeks_share():
    products = ProductIndex.of([1, 2, 3])
    customers = np.array([1, 2])
    bought = purchases_of([(1, 1, 3, 3), (2, 2, 3, 3)])
    # both customers own product 3; the model prefers product 1, but in both weeks they bought
    # product 2, which only the co-purchase signal favours (by 1.0 against the model's 0.8 gap)
    scores = np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0]], dtype=np.float32)
    pool = candidates(scores, bought, CUTOFF, customers, products)
    pool.features["co_purchase"][:] = np.where(pool.positions == 1, 1.0, 0.0)
    weeks = [(pool, {1: {2}}), (pool, {2: {2}})]
    config, value = tune_weeks(weeks, allow_repeats=False)
    assert config.co_purchase_weight > 0.8
    assert value == 1.0
    assert recommend(pool, config, 1) == {1: [2], 2: [2]}


def shared_tastes() -> pl.DataFrame:
    """Ten customers buy products 10 and 20 together; customer 1 buys 10 alone; twelve others
    buy 30, the store's best seller; product 40 nobody buys."""
    rows = [(c, c, p, 5) for c in range(10, 20) for p in (10, 20)]
    rows += [(1, 1, 10, 5)] + [(c, c, 30, 5) for c in range(20, 32)]
    return purchases_of(rows)


def test_als_preference_in_the_pool_is_the_dot_product_of_the_fitted_factors():
    bought = shared_tastes()
    customers = np.array([1, 10, 20])
    scores = np.zeros((3, len(PRODUCTS)), dtype=np.float32)
    pool = candidates(scores, bought, CUTOFF, customers, PRODUCTS)
    factors = baselines.fit_als(bought, CUTOFF, customers, PRODUCTS)

    preference = pool.features["als"]
    for row in range(len(customers)):
        for slot, position in enumerate(pool.positions[row]):
            if position < 0 or position == PRODUCTS.positions(np.array([40]))[0]:
                assert preference[row, slot] == 0.0  # padding; a product nobody bought
            else:
                expected = factors.customers[row] @ factors.products[position]
                assert preference[row, slot] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_als_favourites_follow_each_customers_own_orders_whatever_customers_are_asked_for():
    bought = shared_tastes()
    asked = np.array([25, 999, 1, 12])  # not sorted; 999 has no order
    factors = baselines.fit_als(bought, CUTOFF, asked, PRODUCTS)
    preference = factors.customers @ factors.products.T  # columns: products 10, 20, 30, 40

    assert preference[0, 2] > preference[0, 1]  # 25 buys 30
    assert preference[3, 1] > preference[3, 2]  # 12 buys 10 and 20
    assert preference[2, 1] > preference[2, 2]  # 1 buys 10, as the customers who buy 20 do
    assert not factors.customers[1].any()  # no order, no preference
    alone = baselines.fit_als(bought, CUTOFF, np.array([1]), PRODUCTS)
    np.testing.assert_array_equal(alone.customers[0], factors.customers[2])
    np.testing.assert_array_equal(alone.products, factors.products)


def test_als_reads_nothing_from_the_cutoff_on():
    bought = shared_tastes()
    later = pl.concat([bought, purchases_of([(1, 99, 30, 0), (1, 99, 40, -3)])])
    customers = np.array([1, 10])

    before_only = baselines.fit_als(bought, CUTOFF, customers, PRODUCTS)
    with_later = baselines.fit_als(later, CUTOFF, customers, PRODUCTS)

    np.testing.assert_array_equal(with_later.customers, before_only.customers)
    np.testing.assert_array_equal(with_later.products, before_only.products)
    assert with_later.sold.tolist() == [True, True, True, False]


def test_als_weight_lifts_what_customers_who_shop_alike_buy():
    # customer 1 shares the taste for 10 with the customers who also buy 20, so ALS puts 20
    # first for them even though more customers buy 30; popularity alone puts 30 first
    bought = shared_tastes()
    scores = np.zeros((1, len(PRODUCTS)), dtype=np.float32)
    pool = candidates(scores, bought, CUTOFF, np.array([1]), PRODUCTS)

    by_popularity = BlendConfig(allow_repeats=False, model_weight=0.0, popularity_weight=0.01)
    with_als = replace(by_popularity, als_weight=1.0)
    assert recommend(pool, by_popularity, 1) == {1: [30]}
    assert recommend(pool, with_als, 1) == {1: [20]}


def test_a_rule_weighing_a_signal_the_pool_was_built_without_is_an_error():
    bought = shared_tastes()
    customers = np.array([1])
    signals = Signals.of(bought, CUTOFF, customers, PRODUCTS, als=False)
    pool = signals.pool(
        np.array([0]),
        np.full((1, 0), -1, dtype=np.int64),
        lambda positions: np.zeros(positions.shape, dtype=np.float32),
    )

    assert "als" not in pool.features
    with pytest.raises(ValueError, match="'als'"):
        BlendConfig(allow_repeats=False, als_weight=0.15).scores(pool)


def test_with_no_orders_before_the_cutoff_als_gives_no_preference():
    bought = shared_tastes()
    early = CUTOFF - timedelta(days=30)  # every order above is 5 days before CUTOFF

    factors = baselines.fit_als(bought, early, np.array([1, 10]), PRODUCTS)

    assert factors.customers.shape == (2, baselines.ALS_FACTORS)
    assert factors.products.shape == (len(PRODUCTS), baselines.ALS_FACTORS)
    assert factors.customers.dtype == factors.products.dtype == np.float32
    assert not factors.customers.any()
    assert not factors.sold.any()
    pool = candidates(
        np.zeros((2, len(PRODUCTS)), "f4"), bought, early, np.array([1, 10]), PRODUCTS
    )
    assert not pool.features["als"].any()


def test_a_holdout_fits_als_once_for_the_candidates_and_the_task_b_baseline(monkeypatch):
    bought = shared_tastes()
    customers = np.array([1, 10, 20])
    bought_before = owned_sets(bought)
    test = evaluate.Holdout(
        cutoff=CUTOFF,
        customer_ids=customers,
        index=PRODUCTS,
        bought_before=bought_before,
        bought_in_test={int(c): {30} for c in customers},
        owned=exclusion_matrix(bought_before, customers, PRODUCTS),
        segments={},
        categories=np.zeros(len(PRODUCTS), dtype=np.int64),
    )
    fit = baselines.fit_als
    scores = np.zeros((3, len(PRODUCTS)), dtype=np.float32)
    expected = candidates(scores, bought, CUTOFF, customers, PRODUCTS)  # fits its own
    fresh = fit(bought, CUTOFF, customers, PRODUCTS, **evaluate.ALS_PARAMETERS["B"])
    fits = []
    counted = lambda *a, **k: fits.append(k) or fit(*a, **k)  # noqa: E731
    monkeypatch.setattr(baselines, "fit_als", counted)
    monkeypatch.setattr(blend, "fit_als", counted)  # the name blend imported

    lists = evaluate.baseline_lists(bought, test, "B")
    pool = candidates(scores, bought, CUTOFF, customers, PRODUCTS, als=test.als(bought))

    assert fits == [evaluate.ALS_PARAMETERS["B"]]  # one fit, read by both
    assert lists["als"] == baselines.als(
        bought, CUTOFF, customers, PRODUCTS, 10, test.owned, factors=fresh
    )
    np.testing.assert_array_equal(pool.features["als"], expected.features["als"])
    evaluate.baseline_lists(bought, test, "A")  # task A's ALS is weighted otherwise: a new fit
    assert fits == [evaluate.ALS_PARAMETERS["B"], evaluate.ALS_PARAMETERS["A"]]


def test_signals_refuse_customer_ids_out_of_order_or_twice():
    bought = shared_tastes()
    for ids in ([25, 1, 12], [1, 1, 12]):
        with pytest.raises(ValueError, match="sorted and each given once"):
            Signals.of(bought, CUTOFF, np.array(ids), PRODUCTS, als=False)


def test_bm25_als_keeps_a_product_every_customer_bought():
    # every customer bought 10: BM25 gives it no weight, yet it was sold and may be ranked
    bought = purchases_of([(c, c, 10, 5) for c in range(1, 6)] + [(1, 1, 20, 5), (2, 2, 20, 5)])
    customers = np.arange(1, 6)

    factors = baselines.fit_als(bought, CUTOFF, customers, PRODUCTS, weighting="bm25")
    lists = baselines.als(bought, CUTOFF, customers, PRODUCTS, 2, weighting="bm25")

    assert factors.sold.tolist() == [True, True, False, False]
    assert np.isfinite(factors.customers).all() and np.isfinite(factors.products).all()
    assert all(sorted(shown) == [10, 20] for shown in lists.values())


def test_blend_weights_must_be_finite_and_the_pool_must_hold_the_rules_half_life():
    with pytest.raises(ValueError, match="finite"):
        BlendConfig(popularity_weight=float("nan"))
    with pytest.raises(ValueError, match="finite"):
        BlendConfig(repeat_half_life_days=0.0)
    bought = shared_tastes()
    pool = candidates(np.zeros((1, len(PRODUCTS)), "f4"), bought, CUTOFF, np.array([1]), PRODUCTS)
    with pytest.raises(ValueError, match="half-life"):
        BlendConfig(repeat_half_life_days=5.0).scores(pool)


def promotion_plan(rows: list[tuple]) -> pl.DataFrame:
    """(week's Monday, product, mailer share[, written at]) rows as the lake's promotions table;
    a row is written a week before its week unless said."""
    weeks = [datetime.fromisoformat(r[0]).replace(tzinfo=UTC) for r in rows]
    return pl.DataFrame(
        {
            "week_start": [week.date() for week in weeks],
            "product_id": [r[1] for r in rows],
            "mailer_share": [r[2] for r in rows],
            "display_share": [0.0] * len(rows),
            "modified_at": [
                r[3] if len(r) > 3 else week - timedelta(days=7)
                for r, week in zip(rows, weeks, strict=True)
            ],
        },
        schema_overrides={"modified_at": UTC_US},
    )


# CUTOFF is Monday 2017-12-04: 20 is in that week's mailer, 30 in the week's before and after.
PLAN = promotion_plan(
    [("2017-11-27", 30, 1.0), ("2017-12-04", 20, 0.5), ("2017-12-04", 40, 0.0),
     ("2017-12-11", 30, 1.0), ("2017-12-04", 99, 1.0)]
)  # fmt: skip


@pytest.mark.parametrize(
    "cutoff", [CUTOFF, CUTOFF + timedelta(days=2, hours=13), CUTOFF + timedelta(days=6)]
)
def test_the_mailer_is_the_plan_of_the_week_holding_the_cutoff_and_no_other(cutoff):
    shares = blend.mailer_shares(PLAN, cutoff, PRODUCTS)

    # products 10, 20, 30, 40; 99 is outside the catalogue
    assert shares.tolist() == [0.0, 0.5, 0.0, 0.0]
    assert blend.mailer_shares(PLAN, CUTOFF - timedelta(seconds=1), PRODUCTS).tolist() == [
        0.0, 0.0, 1.0, 0.0
    ]  # fmt: skip
    assert blend.mailer_shares(None, cutoff, PRODUCTS).tolist() == [0.0] * 4


def test_a_plan_row_revised_once_its_week_is_under_way_is_not_read():
    revised = CUTOFF + timedelta(days=3)
    plan = promotion_plan([("2017-12-04", 20, 0.5), ("2017-12-04", 30, 0.75, revised)])

    assert blend.mailer_shares(plan, CUTOFF, PRODUCTS).tolist() == [0.0, 0.5, 0.0, 0.0]
    assert blend.mailer_shares(plan, revised + timedelta(seconds=1), PRODUCTS).tolist() == [
        0.0, 0.5, 0.75, 0.0
    ]  # fmt: skip


def test_the_mailer_weight_lifts_what_the_weeks_mailer_features():
    # by popularity alone 30 comes first for customer 1; in the mailer, 20 does
    bought = shared_tastes()
    scores = np.zeros((1, len(PRODUCTS)), dtype=np.float32)
    pool = candidates(scores, bought, CUTOFF, np.array([1]), PRODUCTS, promotions=PLAN)
    by_popularity = BlendConfig(allow_repeats=False, model_weight=0.0, popularity_weight=0.01)

    assert recommend(pool, by_popularity, 1) == {1: [30]}
    assert recommend(pool, replace(by_popularity, mailer_weight=1.0), 1) == {1: [20]}
    without_plan = candidates(scores, bought, CUTOFF, np.array([1]), PRODUCTS)
    assert not without_plan.features["mailer"].any()
    assert recommend(without_plan, replace(by_popularity, mailer_weight=1.0), 1) == {1: [30]}


def test_the_mailer_yardsticks_rank_task_b_with_the_mailer_alone_and_without_it():
    bought = shared_tastes()
    scores = np.zeros((1, len(PRODUCTS)), dtype=np.float32)
    with_plan = candidates(scores, bought, CUTOFF, np.array([1]), PRODUCTS, promotions=PLAN)
    without_plan = candidates(scores, bought, CUTOFF, np.array([1]), PRODUCTS)
    references = evaluate.mailer_references()

    assert {task for rules in references.values() for task in rules} == {"B"}
    # popularity puts 30 first; the mailer term of the shipped weights lifts 20 above it
    assert recommend(with_plan, references["popularity_mailer"]["B"], 2) == {1: [20, 30]}
    assert recommend(without_plan, references["popularity_mailer"]["B"], 2) == {1: [30, 20]}
    no_mailer = references["blend_without_mailer"]["B"]
    assert recommend(with_plan, no_mailer, 2) == recommend(without_plan, no_mailer, 2)
    assert recommend(with_plan, blend.SHIPPED_BLENDS["B"], 1) == {1: [20]}


def test_a_category_limit_skips_a_candidate_once_its_category_has_enough_better_ones():
    score = np.array([[9.0, 8.0, 7.0, 6.0, 5.0, -np.inf], [9.0, 8.0, -np.inf, 7.0, 1.0, 2.0]])
    codes = np.array([[1, 1, 2, 0, 0, 3], [4, 4, 5, 4, 4, 4]])

    slots, shown = blend.capped_positions(score, codes, 4, cap=1)
    # row 0: one of category 1, then 2, then the uncategorised ones, never limited
    assert slots[0].tolist() == [0, 2, 3, 4] and shown[0].all()
    # row 1: one of category 4; category 5 cannot be shown (-inf): two slots left empty
    assert slots[1, :1].tolist() == [0] and shown[1].tolist() == [True, False, False, False]

    slots, shown = blend.capped_positions(score, codes, 4, cap=2)
    assert slots[0].tolist() == [0, 1, 2, 3]
    assert slots[1, :2].tolist() == [0, 1] and shown[1].tolist() == [True, True, False, False]


def test_the_shipped_task_b_lists_hold_one_product_of_a_category():
    assert blend.SHIPPED_BLENDS["B"].max_per_category == 1
    assert blend.SHIPPED_BLENDS["A"].max_per_category == 0
    with pytest.raises(ValueError, match="max_per_category"):
        BlendConfig(max_per_category=-1)
    bought = shared_tastes()
    scores = np.zeros((1, len(PRODUCTS)), dtype=np.float32)
    categories = np.array([0, 1, 1, 1])  # 20, 30 and 40 share a category
    pool = candidates(scores, bought, CUTOFF, np.array([1]), PRODUCTS, categories)
    rule = BlendConfig(allow_repeats=False, model_weight=0.0, popularity_weight=0.01)

    assert recommend(pool, rule, 3) == {1: [30, 20, 40]}
    assert recommend(pool, replace(rule, max_per_category=1), 3) == {1: [30]}

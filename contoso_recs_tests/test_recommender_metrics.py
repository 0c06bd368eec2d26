"""Ranking metrics against values worked out by hand on tiny lists."""

import math

import numpy as np
import pytest

from contoso_recs.recommender.metrics import (
    already_bought_share,
    average_precision,
    coverage,
    evaluate_task,
    hit_rate,
    interval,
    intervals,
    ndcg,
    per_customer,
    recall,
    task_targets,
)

TOP5 = [10, 20, 30, 40, 50]


def test_hit_rate_is_one_when_any_of_the_top_5_was_bought():
    assert hit_rate(TOP5, {50}) == 1.0
    assert hit_rate([*TOP5, 60], {60}) == 0.0


def test_ndcg_discounts_hits_by_rank_over_the_ideal_ranking():
    # hits at ranks 2 and 5: (1/log2(3) + 1/log2(6)) / (1 + 1/log2(3)) = 0.62405
    assert ndcg(TOP5, {20, 50}) == pytest.approx(0.62405, abs=1e-5)
    assert ndcg(TOP5, {10}) == 1.0
    assert ndcg(TOP5, {99}) == 0.0


def test_ndcg_ideal_is_capped_at_5_relevant_products():
    relevant = set(range(10, 110, 10))
    assert ndcg(TOP5, relevant) == 1.0
    assert ndcg([10], {10, 20}) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_map_averages_precision_at_each_hit_over_min_relevant_and_5():
    # precision 1/2 at rank 2 and 2/5 at rank 5, over 2 relevant products
    assert average_precision(TOP5, {20, 50}) == pytest.approx(0.45)
    # 7 relevant products but only 5 slots: the denominator is 5
    assert average_precision(TOP5, {10, 20, 91, 92, 93, 94, 95}) == pytest.approx(2 / 5)


def test_recall_at_10_is_the_share_of_bought_products_found():
    top10 = list(range(1, 11))
    assert recall(top10, {3, 10, 99, 98}) == 0.5
    assert recall(top10, set()) == 0.0


def test_coverage_counts_distinct_products_in_anyones_top_5():
    lists = [[1, 2, 3, 4, 5, 99], [1, 2, 6, 7, 8]]
    assert coverage(lists, catalogue_size=100) == 0.08


def test_already_bought_share_is_over_all_top_5_slots():
    lists = {1: [5, 6, 7, 8, 9], 2: [1, 2]}
    assert already_bought_share(lists, {1: {5, 9}, 2: {3}}) == pytest.approx(2 / 7)


def test_task_b_keeps_only_new_products_and_drops_customers_without_any():
    bought_in_test = {1: {10, 11}, 2: {20}}
    bought_before = {1: {10}, 2: {20}}
    assert task_targets(bought_in_test, bought_before, "A") == {1: {10, 11}, 2: {20}}
    assert task_targets(bought_in_test, bought_before, "B") == {1: {11}}


def test_evaluation_splits_customers_by_segment():
    lists = {1: [10, 11], 2: [30, 31]}
    targets = {1: {10}, 2: {20}}
    overall, by_segment = evaluate_task(lists, targets, {}, {1: "heavy", 2: "light"}, 10)
    assert overall["hr@5"] == 0.5
    assert overall["customers"] == 2
    assert overall["coverage@5"] == 0.4
    assert by_segment["heavy"]["hr@5"] == 1.0
    assert by_segment["light"]["hr@5"] == 0.0
    assert by_segment["new"] == {}


def test_a_customer_without_recommendations_counts_as_a_miss():
    overall, _ = evaluate_task({}, {1: {10}}, {}, {}, 10)
    assert overall["hr@5"] == 0.0


def test_per_customer_values_are_in_customer_id_order():
    lists = {1: [10, 11, 12, 13, 14], 2: [20, 21, 22, 23, 24]}
    targets = {2: {22}, 1: {99}, 3: {30}}

    assert per_customer(lists, targets, "hr@5").tolist() == [0.0, 1.0, 0.0]
    assert per_customer(lists, targets, "ndcg@5")[1] == pytest.approx(1 / math.log2(4))


def test_intervals_do_not_depend_on_the_order_the_targets_were_built_in():
    rng = np.random.default_rng(5)
    targets = {c: {int(rng.integers(0, 20))} for c in range(300)}
    shown = {c: rng.choice(20, size=5, replace=False).tolist() for c in targets}
    reversed_targets = dict(reversed(list(targets.items())))

    assert intervals({"a": shown}, targets, "a") == intervals({"a": shown}, reversed_targets, "a")


def test_interval_brackets_the_mean_and_narrows_with_more_customers():
    rng = np.random.default_rng(3)
    few = (rng.random(100) < 0.3).astype(float)
    many = (rng.random(10_000) < 0.3).astype(float)

    low, high = interval(few)
    assert low < few.mean() < high
    wide = high - low
    low, high = interval(many)
    assert low < many.mean() < high
    assert high - low < wide / 5  # about 1/sqrt(100) as wide


def test_a_method_better_for_some_customers_and_worse_for_none_has_a_positive_difference():
    targets = {c: {c} for c in range(200)}
    reference = {c: [1000, 1001, 1002, 1003, 1004] for c in targets}  # never a hit
    better = {c: ([c] if c % 4 == 0 else []) + [1000, 1001, 1002, 1003] for c in targets}

    result = intervals({"reference": reference, "better": better}, targets, "reference")

    low, high = result["better"]["hr@5 - reference"]
    assert 0 < low < 0.25 < high
    assert "hr@5 - reference" not in result["reference"]
    assert result["reference"]["hr@5"] == [0.0, 0.0]


def test_identical_lists_differ_by_exactly_nothing():
    targets = {c: {c % 7} for c in range(50)}
    shown = {c: [0, 1, 2, 3, 4] for c in targets}

    result = intervals({"a": shown, "b": dict(shown)}, targets, "a")

    assert result["b"]["hr@5 - a"] == [0.0, 0.0]
    assert result["b"]["ndcg@5 - a"] == [0.0, 0.0]

"""Ranking metrics against values worked out by hand on tiny lists."""

import math

import pytest

from contoso_recs.recommender.metrics import (
    already_bought_share,
    average_precision,
    coverage,
    evaluate_task,
    hit_rate,
    ndcg,
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

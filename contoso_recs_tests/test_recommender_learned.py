"""The learned blend rule (task A): it learns what the weights miss, a customer's own purchases
never reach the figures it is judged by, it round-trips through the model folder, and the weekly
table ranks by it."""

import hashlib
from dataclasses import replace
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from contoso_recs.recommender import learned
from contoso_recs.recommender.blend import SHIPPED_BLENDS, Candidates, ValidationWeek
from contoso_recs.recommender.ranking import ProductIndex
from contoso_recs.recommender.train import train
from contoso_recs.recommender.weekly import weekly_recommendations
from contoso_recs_tests.test_recommender_training import TINY
from contoso_recs_tests.test_weekly_scoring import WEEK, bought_before_week, weekly_lake

PRODUCTS = 200
SLOTS = 40


def pool_of(customers: int, seed: int, first_customer: int = 0) -> Candidates:
    """Random candidates: a third owned, every signal drawn independently."""
    rng = np.random.default_rng(seed)
    positions = np.sort(
        np.stack([rng.choice(PRODUCTS, SLOTS, replace=False) for _ in range(customers)]), axis=1
    )
    owned = rng.random(positions.shape) < 0.35
    shape = positions.shape

    def signal(scale: float = 1.0, owned_only: bool = False) -> np.ndarray:
        value = (rng.random(shape) * scale).astype(np.float32)
        return np.where(owned, value, 0.0).astype(np.float32) if owned_only else value

    return Candidates(
        customer_ids=np.arange(first_customer, first_customer + customers, dtype=np.int64),
        index=ProductIndex.of(np.arange(1, PRODUCTS + 1)),
        positions=positions,
        model=rng.normal(0.0, 0.3, shape).astype(np.float32),
        popularity=signal(6.0),
        repeat={h: signal(2.0, owned_only=True) for h in learned.HALF_LIVES},
        category=signal(3.0),
        owned=owned,
        features={
            "co_purchase": signal(),
            "trend": signal(4.0),
            "frequency": signal(2.0, owned_only=True),
            "due": signal(owned_only=True),
            "repeat_rate": signal(owned_only=True),
        },
    )


def due_buyers(pool: Candidates) -> dict[int, set[int]]:
    """Each customer buys the owned products they are most due for (due > 0.8)."""
    bought = pool.owned & (pool.features["due"] > 0.8)
    products = pool.index.product_ids[pool.positions]
    return {
        int(customer): set(products[row, bought[row]].tolist())
        for row, customer in enumerate(pool.customer_ids)
        if bought[row].any()
    }


def test_the_rule_learns_a_habit_the_weights_barely_weigh():
    """Buying follows `due` alone, which the shipped weights weigh at 0.01 against repeat
    strength's 1: on customers it never saw, the rule ranks far better than the weights."""
    train_pool = pool_of(600, seed=1)
    rule = learned.fit([(train_pool, due_buyers(train_pool))], SHIPPED_BLENDS["A"], threads=1)
    assert rule is not None and rule.customers == len(due_buyers(train_pool))

    fresh = pool_of(300, seed=2, first_customer=1000)
    week = ValidationWeek.of(fresh, due_buyers(fresh))
    assert week.ndcg(rule) > 0.9
    assert week.ndcg(SHIPPED_BLENDS["A"]) < 0.6


def test_too_few_customers_to_learn_from_gives_no_rule():
    small = pool_of(learned.MIN_CUSTOMERS // 2, seed=3)
    assert learned.fit([(small, due_buyers(small))], SHIPPED_BLENDS["A"], threads=1) is None


def test_cross_fitted_scores_never_see_the_customers_own_purchases():
    pool = pool_of(600, seed=4)
    targets = due_buyers(pool)
    explain = SHIPPED_BLENDS["A"]
    scores = learned.cross_fitted_scores(pool, targets, explain, threads=1)

    # what fold 0 buys does not move fold 0's scores: they come from a rule fit on fold 1
    products = pool.index.product_ids[pool.positions]
    least_due = pool.owned & (pool.features["due"] < 0.2)
    scrambled = {
        **targets,
        **{
            int(c): set(products[row, least_due[row]].tolist())
            for row, c in enumerate(pool.customer_ids)
            if c % 2 == 0 and least_due[row].any()
        },
    }
    again = learned.cross_fitted_scores(pool, scrambled, explain, threads=1)
    rows = pool.customer_ids % 2 == 0
    np.testing.assert_array_equal(scores[rows], again[rows])
    assert not np.array_equal(scores[~rows], again[~rows])

    fold_one = learned.fit([(pool.customers_where(~rows), targets)], explain, threads=1)
    np.testing.assert_allclose(scores[rows], fold_one.scores(pool.customers_where(rows)))


def test_the_rule_round_trips_through_the_model_folder(tmp_path):
    pool = pool_of(300, seed=5)
    rule = learned.fit([(pool, due_buyers(pool))], SHIPPED_BLENDS["A"], threads=1)
    assert learned.LearnedRule.load(tmp_path, SHIPPED_BLENDS["A"]) is None

    rule.save(tmp_path)
    loaded = learned.LearnedRule.load(tmp_path, SHIPPED_BLENDS["A"])
    assert loaded.customers == rule.customers
    np.testing.assert_array_equal(loaded.scores(pool), rule.scores(pool))


def test_a_damaged_or_foreign_rule_file_is_refused_with_its_path(tmp_path):
    pool = pool_of(300, seed=5)
    rule = learned.fit([(pool, due_buyers(pool))], SHIPPED_BLENDS["A"], threads=1)
    path = rule.save(tmp_path)
    text = path.read_text()

    path.write_text(text[: len(text) // 3])  # cut short, as by a full disk
    with pytest.raises(learned.UnusableRule, match="is not a readable blend rule"):
        learned.LearnedRule.load(tmp_path, SHIPPED_BLENDS["A"])

    header, _, model = text.partition("\n")
    path.write_text(header[: -len("0123")] + "0123\n" + model)  # no longer the model's digest
    with pytest.raises(learned.UnusableRule, match="is not a readable blend rule"):
        learned.LearnedRule.load(tmp_path, SHIPPED_BLENDS["A"])

    # a whole rule written by a version that ranked by other signals
    foreign = model.replace("feature_names=model ", "feature_names=cosine ")
    customers = header.removeprefix(learned.HEADER).split()[0]
    path.write_text(
        f"{learned.HEADER} {customers} sha256 {hashlib.sha256(foreign.encode()).hexdigest()}\n"
        + foreign
    )
    with pytest.raises(learned.UnusableRule, match="not by this version's signals"):
        learned.LearnedRule.load(tmp_path, SHIPPED_BLENDS["A"])

    path.write_bytes(b"\xff\xfe" + text.encode())  # not text at all
    with pytest.raises(learned.UnusableRule, match="is not a readable blend rule"):
        learned.LearnedRule.load(tmp_path, SHIPPED_BLENDS["A"])

    path.unlink()
    path.mkdir()  # a folder where the file should be
    with pytest.raises(learned.UnusableRule, match="is not a readable blend rule"):
        learned.LearnedRule.load(tmp_path, SHIPPED_BLENDS["A"])


@pytest.fixture(scope="module")
def lake():
    return weekly_lake()


@pytest.fixture(scope="module")
def trained(lake):
    return train(lake, WEEK - timedelta(days=7), replace(TINY, epochs=2))


def taught(prefers_owned: bool) -> learned.LearnedRule:
    """A rule fit on customers who buy only products they own, or only products new to them."""
    pool = pool_of(400, seed=6)
    wanted = pool.owned if prefers_owned else ~pool.owned
    products = pool.index.product_ids[pool.positions]
    targets = {
        int(c): set(products[row, wanted[row]][:3].tolist())
        for row, c in enumerate(pool.customer_ids)
    }
    return learned.fit([(pool, targets)], SHIPPED_BLENDS["A"], threads=1)


def test_the_weekly_table_ranks_by_the_learned_rule(lake, trained):
    owned = bought_before_week(lake).with_columns(pl.lit(True).alias("owned"))

    def share_bought_before(rule) -> float:
        rows = weekly_recommendations(lake, trained, WEEK, rule, "v1", chunk_customers=16)
        joined = rows.join(owned, on=["customer_id", "product_id"], how="left")
        return float(joined["owned"].fill_null(False).mean())

    repeats, discoveries = share_bought_before(taught(True)), share_bought_before(taught(False))
    assert repeats > discoveries + 0.3, (repeats, discoveries)

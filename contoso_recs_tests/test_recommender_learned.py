"""The learned blend rule (task A): it learns what the weights miss, a customer's own purchases
never reach the figures it is judged by, it round-trips through the model folder, and the weekly
table ranks by it."""

import hashlib
import io
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
            "mailer": np.where(rng.random(shape) < 0.05, rng.uniform(0.2, 1.0, shape), 0.0),
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


def week_rows(customers: int, seed: int, week: str) -> learned.WeekRows:
    pool = pool_of(customers, seed=seed, first_customer=seed * 10_000)
    return learned.WeekRows.of(pool, due_buyers(pool), SHIPPED_BLENDS["A"], week)


def test_a_week_too_small_to_learn_from_learns_with_earlier_weeks_kept_beside_models(tmp_path):
    pool = pool_of(learned.MIN_CUSTOMERS, seed=11, first_customer=110_000)
    explain = SHIPPED_BLENDS["A"]
    small = learned.WeekRows.of(pool, due_buyers(pool), explain, "2026-11-23")
    assert learned.fit_rows([small], explain, threads=1) is None
    assert learned.cross_fitted_scores(pool, due_buyers(pool), explain, threads=1) is None

    (tmp_path / "v1").mkdir()
    week_rows(400, seed=12, week="2026-11-16").save(tmp_path / "v1")
    (kept,) = learned.earlier_weeks([tmp_path / "v1"], "2026-11-23")
    rule = learned.fit_rows([small, kept], explain, threads=1)
    assert rule.customers == small.customers + kept.customers

    fresh = pool_of(300, seed=13, first_customer=100_000)
    week = ValidationWeek.of(fresh, due_buyers(fresh))
    assert week.ndcg(rule) > 0.9 > 0.6 > week.ndcg(explain)
    # and the week's own figures, cross-fitted with the earlier week, come from such rules
    folds = learned.cross_fitted_scores(pool, due_buyers(pool), explain, 1, [kept])
    own = ValidationWeek.of(pool, due_buyers(pool))
    assert own.ndcg(learned.CrossFitted(folds, explain)) > 0.9 > 0.6 > own.ndcg(explain)


def kept_beside(root, folder: str, week: str, seed: int):
    (root / folder).mkdir()
    week_rows(120, seed=seed, week=week).save(root / folder)
    return root / folder


def test_the_earlier_weeks_are_the_latest_whole_weeks_before_the_week(tmp_path):
    folders = [
        kept_beside(tmp_path, "a", "2026-10-26", 1),
        kept_beside(tmp_path, "b", "2026-11-09", 2),
        kept_beside(tmp_path, "c", "2026-11-02", 3),
        kept_beside(tmp_path, "d", "2026-11-09", 4),  # a later retrain on the same week
        kept_beside(tmp_path, "e", "2026-11-16", 5),
        kept_beside(tmp_path, "f", "2026-11-20", 6),  # a retrain by hand: overlaps the week
        kept_beside(tmp_path, "g", "2026-11-23", 7),  # the week being fit
        kept_beside(tmp_path, "h", "2026-11-30", 8),  # after it (a backtest of a later week)
        kept_beside(tmp_path, "i", "2026-11-12", 9),  # overlaps 11-16, the week chosen after it
    ]
    earlier = learned.earlier_weeks(folders, "2026-11-23")
    assert [w.week for w in earlier] == ["2026-11-16", "2026-11-09", "2026-11-02"]
    assert len(earlier) == learned.RULE_WEEKS - 1
    np.testing.assert_array_equal(earlier[1].x, learned.WeekRows.load(folders[3]).x)

    # a damaged file is left out and the next week taken instead
    (folders[4] / learned.ROWS_FILE).write_bytes(b"PK\x03\x04 not a whole zip")
    earlier = learned.earlier_weeks(folders, "2026-11-23")
    assert [w.week for w in earlier] == ["2026-11-12", "2026-11-02", "2026-10-26"]


def test_kept_rows_are_capped_whole_customers_and_refused_when_unreadable(
    tmp_path, monkeypatch, caplog
):
    rows = week_rows(300, seed=21, week="2026-11-16")
    monkeypatch.setattr(learned, "KEPT_CUSTOMERS", 50)
    path = rows.save(tmp_path)
    kept = learned.WeekRows.load(tmp_path)
    assert kept.week == "2026-11-16" and kept.customers == 50
    assert len(kept.x) == len(kept.labels) == kept.groups.sum()
    # whole customers: each group holds a bought product, as every customer's rows do
    ends = np.cumsum(kept.groups)
    assert all(
        kept.labels[end - size : end].any() for end, size in zip(ends, kept.groups, strict=True)
    )
    assert {tuple(r) for r in kept.x} <= {tuple(r) for r in rows.x}
    content = path.read_bytes()

    def refused(**arrays) -> bool:
        """Whether the rows file written with these arrays changed is left out, warned of."""
        saved = dict(np.load(io.BytesIO(content)))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{**saved, **arrays})
        path.write_bytes(buffer.getvalue())
        caplog.clear()
        return learned.WeekRows.load(tmp_path) is None and "left out" in caplog.text

    assert not refused()
    assert refused(week=np.asarray("next monday"))
    assert refused(features=np.asarray((*learned.FEATURES[:-1], "cosine")))
    assert refused(labels=kept.labels[:-1])
    assert refused(labels=kept.labels.astype(str))
    assert refused(groups=np.concatenate([[-1, kept.groups[0] + 1], kept.groups[1:]]))
    assert refused(x=kept.x.astype(np.float64))
    assert refused(x=kept.x[:, :-1])

    path.write_bytes(content[: len(content) // 2])  # cut short
    assert learned.WeekRows.load(tmp_path) is None
    damaged = bytearray(content)
    middle = len(content) // 2
    damaged[middle : middle + 64] = bytes(64)  # the zip's index whole, a member's data not
    path.write_bytes(bytes(damaged))
    assert learned.WeekRows.load(tmp_path) is None
    path.unlink()
    path.mkdir()  # a folder where the file should be
    caplog.clear()
    assert learned.WeekRows.load(tmp_path) is None and "left out" in caplog.text
    assert learned.WeekRows.load(tmp_path / "elsewhere") is None


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

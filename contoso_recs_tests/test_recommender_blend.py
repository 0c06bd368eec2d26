"""The blend: repeat purchases and two-tower candidates, repeats shown only when configured."""

from datetime import UTC, datetime

import numpy as np
import polars as pl

from contoso_recs.recommender.blend import BlendConfig, candidates, recommend, tune
from contoso_recs.recommender.ranking import ProductIndex

CUTOFF = datetime(2017, 12, 4, tzinfo=UTC)
PRODUCTS = ProductIndex.of([100, 200, 300, 400])
CUSTOMERS = np.array([1, 2])
# Two-tower cosine per customer (rows) and product (columns 100, 200, 300, 400).
MODEL_SCORES = np.array([[0.9, 0.1, 0.5, 0.2], [0.1, 0.8, 0.3, 0.7]], dtype=np.float32)


def bought() -> pl.DataFrame:
    """Customer 1 bought product 200 in three orders; customer 2 bought product 400 once."""
    return pl.DataFrame(
        {
            "customer_id": [1, 1, 1, 2],
            "order_id": [1, 2, 3, 4],
            "product_id": [200, 200, 200, 400],
            "at": [datetime(2017, 11, d, tzinfo=UTC) for d in (20, 27, 30, 30)],
            "quantity": [1, 1, 1, 1],
            "amount": [1.0, 1.0, 1.0, 1.0],
        },
        schema_overrides={"at": pl.Datetime("us", "UTC")},
    )


def pool():
    return candidates(MODEL_SCORES, bought(), CUTOFF, CUSTOMERS, PRODUCTS)


def test_task_b_never_recommends_a_product_bought_before():
    config = BlendConfig(allow_repeats=False, repeat_weight=5.0, popularity_weight=0.0)
    assert recommend(pool(), config, 3) == {1: [100, 300, 400], 2: [200, 300, 100]}


def test_task_a_ranks_a_strong_repeat_purchase_first():
    config = BlendConfig(allow_repeats=True, repeat_weight=5.0, popularity_weight=0.0)
    assert recommend(pool(), config, 3) == {1: [200, 100, 300], 2: [400, 200, 300]}


def test_without_repeat_weight_the_blend_is_the_two_tower_ranking():
    config = BlendConfig(allow_repeats=True, repeat_weight=0.0, popularity_weight=0.0)
    assert recommend(pool(), config, 2) == {1: [100, 300], 2: [200, 400]}


def test_tuning_picks_repeats_when_the_validation_week_is_repeat_buying():
    config, value = tune(pool(), {1: {200}, 2: {400}}, allow_repeats=True)
    assert config.allow_repeats
    assert config.repeat_weight > 0
    assert value == 1.0


def test_tuning_for_task_b_keeps_repeats_out():
    config, _ = tune(pool(), {1: {300}}, allow_repeats=False)
    assert not config.allow_repeats
    assert config.repeat_weight == 0.0

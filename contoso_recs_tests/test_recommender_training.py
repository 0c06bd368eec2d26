"""Two-tower training: the loss it optimises, that it learns, and that a seed reproduces it."""

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import torch

from contoso_recs.recommender import blend
from contoso_recs.recommender.data import LakeFrames, as_cutoff, catalogue, purchases
from contoso_recs.recommender.encoding import build_vocabulary, product_positions
from contoso_recs.recommender.ranking import ProductIndex
from contoso_recs.recommender.train import (
    TrainedModel,
    candidate_log_q,
    learning_rate_share,
    parse_args,
    recent_buyer_buckets,
    snapshot_batches,
    train,
    training_examples,
    uniform_negatives,
)
from contoso_recs.recommender.two_tower import TwoTowerConfig, in_batch_loss, popularity_buckets

CUTOFF = datetime(2017, 3, 6, tzinfo=UTC)
UTC_US = pl.Datetime("us", "UTC")
TINY = replace(
    TwoTowerConfig(),
    dim=8,
    id_dim=8,
    attribute_dim=4,
    hidden=16,
    customer_buckets=64,
    history_len=5,
    weeks=6,
    batch_size=32,
    epochs=4,
)


def synthetic_lake() -> LakeFrames:
    """40 customers in two tastes, each ordering 2 of their taste's 5 products every week.

    Customers 0-19 buy dairy (products 1-5), customers 20-39 buy bakery (products 6-10).
    """
    rng = np.random.default_rng(3)
    orders, lines = [], []
    for week in range(8):
        for customer in range(40):
            order_id = len(orders) + 1
            day = CUTOFF - timedelta(days=7 * (8 - week) - int(rng.integers(0, 7)))
            orders.append((order_id, customer, 1, "store", day, day))
            first = 1 if customer < 20 else 6
            for n, product in enumerate(rng.choice(5, size=2, replace=False) + first):
                lines.append((order_id, n + 1, int(product), 1, 2.0, day))
    order_frame = pl.DataFrame(
        orders,
        schema={
            "order_id": pl.Int64,
            "customer_id": pl.Int64,
            "store_id": pl.Int64,
            "channel": pl.String,
            "ordered_at": UTC_US,
            "modified_at": UTC_US,
        },
        orient="row",
    )
    line_frame = pl.DataFrame(
        lines,
        schema={
            "order_id": pl.Int64,
            "line_number": pl.Int64,
            "product_id": pl.Int64,
            "quantity": pl.Int64,
            "amount": pl.Float64,
            "modified_at": UTC_US,
        },
        orient="row",
    )
    products = pl.DataFrame(
        {
            "product_id": list(range(1, 11)),
            "name": [f"dairy item {i}" for i in range(5)] + [f"bakery item {i}" for i in range(5)],
            "department": ["dairy"] * 5 + ["bakery"] * 5,
            "category": ["milk", "cheese", "milk", "yoghurt", "cheese"] + ["bread"] * 5,
            "brand": ["National", "Private"] * 5,
            "price": [1.0, 2.0, 3.0, 4.0, 5.0] * 2,
            "introduced_at": pl.Series([None] * 10, dtype=UTC_US),
            "discontinued": [False] * 10,
            "modified_at": pl.Series([CUTOFF - timedelta(days=365)] * 10, dtype=UTC_US),
        }
    )
    customers = pl.DataFrame(
        {
            "customer_id": list(range(40)),
            "age_band": ["35-44"] * 20 + ["65+"] * 20,
            "income_band": ["50-74K"] * 40,
            "household_size": [2] * 40,
            "created_at": pl.Series([CUTOFF - timedelta(days=365)] * 40, dtype=UTC_US),
        }
    )
    views = pl.DataFrame(
        schema={
            "customer_id": pl.Int64,
            "product_id": pl.Int64,
            "viewed_at": UTC_US,
            "dwell_seconds": pl.Float64,
        }
    )
    images = pl.DataFrame(schema={"product_id": pl.Int64, "features": pl.List(pl.Float32)})
    return LakeFrames(products, order_frame, line_frame, customers, views, images)


def test_in_batch_loss_is_softmax_cross_entropy_over_the_batch_products():
    customers = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    products = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = in_batch_loss(customers, products, torch.tensor([5, 6]), torch.tensor([0, 1]), None, 1.0)
    # each row: logits (1, 0) with the first right: log(1 + e^-1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_in_batch_loss_subtracts_log_sampling_frequency():
    customers = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    log_q = torch.log(torch.tensor([0.5, 0.25]))
    loss = in_batch_loss(
        customers, customers, torch.tensor([5, 6]), torch.tensor([0, 1]), log_q, 1.0
    )
    # row 0: logits (1 + ln 2, ln 4); row 1: (ln 2, 1 + ln 4)
    row0 = -math.log(2 * math.e / (2 * math.e + 4))
    row1 = -math.log(4 * math.e / (2 + 4 * math.e))
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_in_batch_loss_does_not_count_a_duplicate_product_or_same_customer_as_negative():
    customers = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    products = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # rows 0 and 1 bought the same product 5; rows 1 and 2 are the same customer snapshot
    positions, snapshots = torch.tensor([5, 5, 7]), torch.tensor([0, 1, 1])
    loss = in_batch_loss(customers, products, positions, snapshots, None, 1.0)
    # row 0 competes with product 7 only, row 2 with row 0's product 5 only (logits 1 vs 0);
    # row 1 has no negative left, so it adds nothing
    assert loss.item() == pytest.approx(2 * math.log(1 + math.exp(-1)) / 3, abs=1e-6)


def test_snapshot_batches_keep_each_customer_week_whole():
    snapshot = np.array([0, 1, 1, 2, 2, 2, 3])
    batches = list(snapshot_batches(snapshot, 3, np.random.default_rng(0)))
    seen = sorted(int(r) for _, rows, _ in batches for r in rows)
    assert seen == list(range(7))
    for chosen, rows, owner in batches:
        assert snapshot[rows].tolist() == chosen[owner].tolist()


def test_training_lowers_the_loss():
    trained = train(synthetic_lake(), CUTOFF, TINY)
    losses = trained.metrics["epoch_loss"]
    assert len(losses) == 4
    assert losses[-1] < losses[0] - 0.1


def test_training_is_reproducible_with_the_seed():
    first = train(synthetic_lake(), CUTOFF, TINY).metrics["epoch_loss"]
    second = train(synthetic_lake(), CUTOFF, TINY).metrics["epoch_loss"]
    other_seed = train(synthetic_lake(), CUTOFF, replace(TINY, seed=8)).metrics["epoch_loss"]
    assert first == second
    assert first != other_seed


def test_epoch_callback_gets_epoch_loss_and_speed():
    calls = []
    trained = train(
        synthetic_lake(), CUTOFF, replace(TINY, epochs=2), on_epoch=lambda *args: calls.append(args)
    )
    assert [c[0] for c in calls] == [1, 2]
    assert [c[1] for c in calls] == trained.metrics["epoch_loss"]
    assert all(c[2] > 0 for c in calls)


def test_the_learning_rate_share_falls_linearly_from_one_to_the_final_share():
    assert [learning_rate_share(e, 3, 0.1) for e in (1, 2, 3)] == pytest.approx([1.0, 0.55, 0.1])
    assert [learning_rate_share(e, 4, 1.0) for e in (1, 2, 3, 4)] == [1.0] * 4
    assert learning_rate_share(1, 1, 0.1) == 1.0  # a single epoch trains at the full rate


def test_every_epoch_trains_at_its_share_of_both_learning_rates(monkeypatch):
    seen: dict[str, list[float]] = {"dense": [], "sparse": []}
    for name, optimizer in (("dense", torch.optim.Adam), ("sparse", torch.optim.SparseAdam)):
        real_step = optimizer.step

        def recording_step(self, *args, _name=name, _real=real_step, **kwargs):
            seen[_name].append(self.param_groups[0]["lr"])
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(optimizer, "step", recording_step)
    config = replace(TINY, epochs=3, final_lr_share=0.1)
    train(synthetic_lake(), CUTOFF, config)
    for name, lr in (("dense", config.dense_lr), ("sparse", config.sparse_lr)):
        distinct = list(dict.fromkeys(seen[name]))
        assert distinct == pytest.approx([lr, 0.55 * lr, 0.1 * lr])


def test_model_bundle_round_trips(tmp_path):
    lake = synthetic_lake()
    trained = train(lake, CUTOFF, replace(TINY, epochs=1))
    trained.save(tmp_path)
    loaded = TrainedModel.load(tmp_path, device="cpu")
    assert loaded.config == trained.config
    assert loaded.vocab == trained.vocab
    # trained on the GPU where there is one, loaded on the CPU: the same up to float rounding
    np.testing.assert_allclose(loaded.product_vectors(), trained.product_vectors(), atol=1e-5)
    assert trained.config.recent_popularity_days > 0
    np.testing.assert_allclose(
        loaded.popularity_scores(purchases(lake), CUTOFF),
        trained.popularity_scores(purchases(lake), CUTOFF),
        atol=1e-6,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "metrics.json",
        "model.pt",
        "vocabulary.json",
    ]


def test_logq_weight_scales_the_correction_the_loss_gets(monkeypatch):
    from contoso_recs.recommender import train as train_module

    seen = {}
    real_loss = train_module.in_batch_loss

    def recording_loss(customers, products, positions, snapshots, log_q, temperature, **drawn):
        seen.setdefault("log_q", []).append(log_q.clone())
        return real_loss(customers, products, positions, snapshots, log_q, temperature, **drawn)

    monkeypatch.setattr(train_module, "in_batch_loss", recording_loss)
    train(synthetic_lake(), CUTOFF, replace(TINY, epochs=1, logq_weight=1.0))
    plain = seen.pop("log_q")
    train(synthetic_lake(), CUTOFF, replace(TINY, epochs=1, logq_weight=2.0))
    doubled = seen.pop("log_q")
    assert len(plain) == len(doubled) > 0
    for one, two in zip(plain, doubled, strict=True):
        torch.testing.assert_close(two, 2 * one)


def test_a_bundle_saved_before_logq_weight_existed_loads_as_trained_with_the_plain_correction(
    tmp_path,
):
    trained = train(synthetic_lake(), CUTOFF, replace(TINY, epochs=1, logq_weight=1.5))
    trained.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["logq_weight"] == 1.5
    del config["logq_weight"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert TrainedModel.load(tmp_path, device="cpu").config.logq_weight == 1.0


def test_a_bundle_saved_before_final_lr_share_existed_loads_as_trained_at_constant_rates(
    tmp_path,
):
    trained = train(synthetic_lake(), CUTOFF, replace(TINY, epochs=1))
    trained.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["final_lr_share"] == TwoTowerConfig().final_lr_share != 1.0
    del config["final_lr_share"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert TrainedModel.load(tmp_path, device="cpu").config.final_lr_share == 1.0


def test_a_bundle_saved_before_the_recent_popularity_term_existed_loads_without_it(tmp_path):
    trained = train(synthetic_lake(), CUTOFF, replace(TINY, epochs=1, recent_popularity_days=0))
    trained.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["recent_popularity_days"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = TrainedModel.load(tmp_path, device="cpu")
    assert loaded.config.recent_popularity_days == 0 != TwoTowerConfig().recent_popularity_days
    assert (loaded.popularity_scores(purchases(synthetic_lake()), CUTOFF) == 0).all()


def test_the_online_evaluation_reuses_its_cached_model_only_with_the_same_settings(
    tmp_path, monkeypatch
):
    from contoso_recs.recommender import online_evaluation

    lake = synthetic_lake()
    first = online_evaluation.trained_model(lake, CUTOFF, None, tmp_path, replace(TINY, epochs=1))
    trainings = []
    real_train = online_evaluation.train
    monkeypatch.setattr(
        online_evaluation, "train", lambda *args: trainings.append(args) or real_train(*args)
    )

    again = online_evaluation.trained_model(lake, CUTOFF, None, tmp_path, replace(TINY, epochs=1))
    assert trainings == []
    np.testing.assert_array_equal(again.product_vectors(), first.product_vectors())

    changed = online_evaluation.trained_model(lake, CUTOFF, None, tmp_path, TINY)
    assert len(trainings) == 1
    assert changed.config == TINY
    assert TrainedModel.load(tmp_path, device="cpu").config == TINY


def test_a_training_snapshot_sees_only_profiles_created_before_its_week():
    lake = synthetic_lake()
    # customer 0's profile is created two weeks before the cutoff
    customers = lake.customers.with_columns(
        pl.when(pl.col("customer_id") == 0)
        .then(CUTOFF - timedelta(days=14))
        .otherwise(pl.col("created_at"))
        .alias("created_at")
    )
    bought = purchases(lake)
    vocab = build_vocabulary(catalogue(lake, CUTOFF), customers, TINY.customer_buckets)

    examples = training_examples(vocab, bought, customers, CUTOFF, TINY)

    # every customer buys every week: one block of 40 snapshots per week, customer 0 first
    profiles = examples.customers.profile
    assert len(profiles) == 40 * TINY.weeks
    first_rows = profiles[::40]
    assert first_rows[:-1].tolist() == [[0, 0, 0]] * (TINY.weeks - 1)
    assert first_rows[-1].tolist() != [0, 0, 0]
    assert (profiles[1::40] != 0).all()


def test_uniform_negatives_are_extra_wrong_answers_for_every_customer():
    customers = torch.eye(3)[:2]  # two customers, each bought one product
    products = torch.eye(3)[:2]
    drawn = torch.eye(3)[2:]  # a third product, drawn beside the batch
    positions, snapshots = torch.tensor([1, 2]), torch.tensor([0, 1])

    loss = in_batch_loss(customers, products, positions, snapshots, None, 1.0, negatives=drawn)

    # each row: its own product at cosine 1 against the other (0) and the drawn one (0)
    expected = -math.log(math.e / (math.e + 1 + 1))
    assert loss.item() == pytest.approx(expected)
    corrected = in_batch_loss(
        customers,
        products,
        positions,
        snapshots,
        torch.zeros(2),
        1.0,
        negatives=drawn,
        negatives_log_q=torch.tensor([math.log(2.0)]),
    )
    assert corrected.item() == pytest.approx(-math.log(math.e / (math.e + 1 + 0.5)))


def test_uniform_negatives_leave_out_the_batch_products_and_are_reproducible():
    positions = torch.tensor([1, 2, 3])
    first = uniform_negatives(positions, 10, 200, torch.Generator().manual_seed(7))
    again = uniform_negatives(positions, 10, 200, torch.Generator().manual_seed(7))

    assert torch.equal(first, again)
    assert set(first.tolist()) == set(range(4, 11))
    assert uniform_negatives(positions, 10, 0, torch.Generator()).numel() == 0


def test_with_uniform_negatives_each_candidate_is_corrected_by_its_expected_count():
    log_q = torch.log(torch.tensor([1.0, 0.5, 0.25, 0.25]))  # position 0 unused
    candidates = torch.tensor([1, 2, 3])

    plain = candidate_log_q(log_q, candidates, batch_examples=4, uniform=0, n_products=3)
    mixed = candidate_log_q(log_q, candidates, batch_examples=4, uniform=6, n_products=3)

    torch.testing.assert_close(plain, log_q[candidates])
    torch.testing.assert_close(mixed, torch.log(torch.tensor([2.0 + 2, 1.0 + 2, 1.0 + 2])))


def test_training_with_uniform_negatives_gives_every_batch_drawn_products(monkeypatch):
    from contoso_recs.recommender import train as train_module

    drawn = []
    real_loss = train_module.in_batch_loss

    def recording_loss(*args, negatives=None, negatives_log_q=None, bias=None):
        drawn.append((len(negatives), negatives_log_q.clone()))
        # the recent-popularity term: one row per example, one column per candidate
        assert bias.shape == (len(args[0]), len(args[1]) + len(negatives))
        return real_loss(*args, negatives=negatives, negatives_log_q=negatives_log_q, bias=bias)

    monkeypatch.setattr(train_module, "in_batch_loss", recording_loss)
    # batches of 2 customer snapshots (4 products of the 10): the rest can be drawn
    trained = train(synthetic_lake(), CUTOFF, replace(TINY, batch_size=4, uniform_negatives=8))

    counts = [count for count, _ in drawn]
    assert all(0 <= count <= 8 for count in counts)
    assert sum(count > 0 for count in counts) > 0.9 * len(counts)
    # 10 products, 8 draws a batch: each drawn one is expected 0.8 times plus its batch share
    assert all((log_q > np.log(0.8)).all() for _, log_q in drawn)
    losses = trained.metrics["epoch_loss"]
    assert losses[-1] < losses[0] - 0.1


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        (["--epochs", "0"], "at least 1"),
        (["--batch-size", "-5"], "at least 1"),
        (["--dim", "0"], "at least 1"),
        (["--cutoff", "next monday"], "is not a date"),
        (["--versions", "{orders: 3}"], "not JSON"),
        (["--versions", '{"orders": -1}'], "must map table names"),
    ],
)
def test_the_training_command_refuses_bad_arguments_before_reading_the_lake(
    argument, message, capsys
):
    argv = ["--lake", "/nonexistent", "--cutoff", "2026-11-23", "--out", "/nonexistent/m"]
    with pytest.raises(SystemExit):
        parse_args(argv + argument)
    assert message in capsys.readouterr().err


def test_training_before_any_product_is_on_sale_is_a_clear_error():
    lake = synthetic_lake()
    later = as_cutoff("2017-03-01")
    lake = replace(lake, products=lake.products.with_columns(introduced_at=pl.lit(later)))
    with pytest.raises(ValueError, match="no product in the catalogue before 2017-02-27"):
        train(lake, as_cutoff("2017-02-27"), TINY)


def test_recent_buyers_fall_in_buckets_of_doubling_size():
    buyers = [0, 1, 2, 3, 4, 7, 8, 16383, 16384, 10**6]
    assert popularity_buckets(buyers).tolist() == [0, 1, 2, 2, 3, 3, 4, 14, 15, 15]


def test_recent_buyer_buckets_count_distinct_customers_in_the_days_before_only():
    lake = synthetic_lake()
    vocab = build_vocabulary(catalogue(lake, CUTOFF), lake.customers, TINY.customer_buckets)
    at = CUTOFF
    bought = pl.DataFrame(
        {
            "customer_id": [1, 2, 2, 3, 4, 5, 6],
            "product_id": [1, 1, 1, 2, 2, 3, 99],
            "at": [
                at - timedelta(days=1),  # product 1: customers 1 and 2 (twice): 2 buyers
                at - timedelta(days=2),
                at - timedelta(days=3),
                at - timedelta(days=28),  # product 2: the first day of the window counts
                at,  # ... a purchase at `at` does not
                at - timedelta(days=28, seconds=1),  # product 3: before the window
                at - timedelta(days=1),  # a product the model does not know
            ],
        },
        schema_overrides={"at": UTC_US},
    )

    buckets = recent_buyer_buckets(vocab, bought, at, 28)

    positions = product_positions(vocab, np.array([1, 2, 3, 4]))
    assert buckets[positions].tolist() == [2, 1, 0, 0]
    assert buckets[0] == 0 and len(buckets) == len(vocab.product_ids) + 1


def test_each_snapshot_reads_the_recent_buyers_of_the_days_before_its_own_week():
    lake = synthetic_lake()
    config = replace(TINY, recent_popularity_days=7)
    bought = purchases(lake)
    # nobody buys in the third week of the six: its snapshots are left out
    empty_start = CUTOFF - timedelta(days=7 * (config.weeks - 2))
    in_empty_week = (bought["at"] >= empty_start) & (bought["at"] < empty_start + timedelta(7))
    bought = bought.filter(~in_empty_week)
    vocab = build_vocabulary(catalogue(lake, CUTOFF), lake.customers, config.customer_buckets)

    examples = training_examples(vocab, bought, lake.customers, CUTOFF, config)

    starts = [CUTOFF - timedelta(days=7 * week) for week in range(config.weeks, 0, -1)]
    starts = [start for start in starts if start != empty_start]
    assert len(examples.popularity) == len(starts) == config.weeks - 1
    for table, start in zip(examples.popularity, starts, strict=True):
        np.testing.assert_array_equal(table, recent_buyer_buckets(vocab, bought, start, 7))
    # the week after the empty one has no recent buyers at all
    assert (examples.popularity[starts.index(empty_start + timedelta(7))] == 0).all()
    assert examples.week.tolist() == np.repeat(np.arange(len(starts)), 40).tolist()


def test_the_evaluation_ranks_by_the_models_recent_popularity_term_too():
    lake = synthetic_lake()
    trained = train(lake, CUTOFF, replace(TINY, epochs=1))
    bought = purchases(lake)
    index = ProductIndex.of(np.arange(1, 11))
    customers = np.arange(40)
    plain = blend.two_tower_scores(trained, bought, lake.customers, customers, CUTOFF, index)
    with torch.no_grad():
        trained.model.popularity_bias += torch.arange(16, dtype=torch.float32)

    lifted = blend.two_tower_scores(trained, bought, lake.customers, customers, CUTOFF, index)

    buckets = recent_buyer_buckets(trained.vocab, bought, CUTOFF, 7)
    step = TINY.temperature * buckets[product_positions(trained.vocab, index.product_ids)]
    np.testing.assert_allclose(lifted - plain, np.broadcast_to(step, plain.shape), atol=1e-5)
    assert np.ptp(step) > 0


def test_in_batch_loss_adds_each_example_its_candidates_bias():
    customers = torch.eye(3)[:2]
    products = torch.eye(3)[:2]
    drawn = torch.eye(3)[2:]
    positions, snapshots = torch.tensor([1, 2]), torch.tensor([0, 1])
    # columns: the two batch products, then the drawn one; rows: the two examples
    bias = torch.tensor([[0.0, 1.0, 2.0], [0.5, 0.0, 0.0]])

    loss = in_batch_loss(
        customers, products, positions, snapshots, None, 1.0, negatives=drawn, bias=bias
    )

    row0 = -math.log(math.e / (math.e + math.e + math.e**2))  # logits 1, 0 + 1, 0 + 2
    row1 = -math.log(math.e / (math.e**0.5 + math.e + 1))  # logits 0 + .5, 1, 0
    assert loss.item() == pytest.approx((row0 + row1) / 2)


def test_the_recent_popularity_term_learns_that_products_bought_lately_sell():
    """The tiny world's ten products sell every week; ten more in the catalogue never do."""
    lake = synthetic_lake()
    unsold = lake.products.with_columns(
        pl.col("product_id") + 10, pl.col("name").str.replace("item", "special")
    )
    lake = replace(lake, products=pl.concat([lake.products, unsold]))
    config = replace(TINY, recent_popularity_days=28, epochs=8)
    vocab = build_vocabulary(catalogue(lake, CUTOFF), lake.customers, config.customer_buckets)
    examples = training_examples(vocab, purchases(lake), lake.customers, CUTOFF, config)
    # one table of buckets per week of snapshots, and each snapshot's week
    assert examples.popularity.shape == (config.weeks, 21)
    assert examples.week.tolist() == np.repeat(np.arange(config.weeks), 40).tolist()
    sold = product_positions(vocab, np.arange(1, 11))
    assert (examples.popularity[-1][sold] > 0).all()
    assert (examples.popularity[-1][product_positions(vocab, np.arange(11, 21))] == 0).all()

    trained = train(lake, CUTOFF, config)

    bias = trained.model.popularity_bias.detach().numpy()
    assert (bias[np.unique(examples.popularity[:, sold])] > bias[0]).all()
    scores = trained.popularity_scores(purchases(lake), CUTOFF)
    assert scores.shape == (21,)
    assert (scores[sold] > scores[product_positions(vocab, np.arange(11, 21))].max()).all()
    # as of a date before any purchase, every product scores alike (as unsold)
    early = trained.popularity_scores(purchases(lake), CUTOFF - timedelta(days=400))
    assert np.allclose(early, early[0])


def test_a_model_without_the_recent_popularity_term_adds_nothing():
    trained = train(synthetic_lake(), CUTOFF, replace(TINY, epochs=1, recent_popularity_days=0))
    assert not hasattr(trained.model, "popularity_bias")
    assert (trained.popularity_scores(purchases(synthetic_lake()), CUTOFF) == 0).all()

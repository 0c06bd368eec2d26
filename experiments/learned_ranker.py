"""Experiment, not shipped: a gradient-boosted ranker over the blend's candidate pools.

For each cutoff T it measures, on The Complete Journey:

- the pool's ceiling per task: the share of test customers with at least one product they buy
  in the test week anywhere in their pool (task B: among the products new to them), the mean
  number of slots a customer can be shown, and the share of bought products the pool holds;
- the tuned blend, exactly as `make evaluate` tunes it (two weeks before T);
- LightGBM rankers trained on the pools of the four weeks before T (label: the customer bought
  the candidate that week; task B: only products new to the customer). Weeks T-28 and T-21 are
  scored by a two-tower model trained before T-28, weeks T-14 and T-7 by one trained before
  T-14, and the test week by one trained before T, so every signal is built from data before
  the week it describes and nothing is tuned on the test week. The variant reported as chosen
  is the one with the best NDCG@5 on week T-7 when trained on T-28, T-21 and T-14.

    .venv/bin/python -m experiments.learned_ranker --lake data/completejourney/lake \\
        --cutoffs 2017-12-04 2017-11-13 --tasks A B --out data/ranker_experiment.json

Trained models are kept under --work (default data/ranker_experiment) for the next run.
"""

import argparse
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import torch

from contoso_recs.recommender import blend
from contoso_recs.recommender.data import LakeFrames, as_cutoff, before, purchases, read_lake
from contoso_recs.recommender.evaluate import Holdout, holdout, model_pool
from contoso_recs.recommender.metrics import evaluate_task
from contoso_recs.recommender.ranking import best_positions
from contoso_recs.recommender.train import TrainedModel, train
from contoso_recs.recommender.two_tower import TwoTowerConfig

log = logging.getLogger(__name__)

LIST_LENGTH = 10
# Signals that describe the product alone (age, price, department, category).
PRODUCT_FEATURES = {"p_age", "p_price", "p_dept", "p_cat"}
BASE = {
    "learning_rate": 0.03,
    "num_threads": 1,
    "verbose": -1,
    "seed": 7,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "feature_fraction": 0.8,
    "lambda_l2": 10.0,
}
SMALL_BINARY = {**BASE, "objective": "binary", "num_leaves": 15, "min_data_in_leaf": 1000}
SMALL_LAMBDARANK = {
    **BASE,
    "objective": "lambdarank",
    "num_leaves": 7,
    "min_data_in_leaf": 1000,
    "lambdarank_truncation_level": 20,
}
MID_BINARY = {**BASE, "objective": "binary", "num_leaves": 31, "min_data_in_leaf": 300}
# name: (LightGBM parameters, rounds, features left out)
VARIANTS = {
    "binary_small": (SMALL_BINARY, 200, set()),
    "binary_small_no_product_features": (SMALL_BINARY, 200, PRODUCT_FEATURES),
    "lambdarank_small": (SMALL_LAMBDARANK, 150, set()),
    "binary_mid": (MID_BINARY, 300, set()),
}


@dataclass(frozen=True)
class Week:
    """One week's holdout, its candidate pool and the pool's feature tensor."""

    test: Holdout
    pool: blend.Candidates
    names: list[str]
    features: np.ndarray

    def labels(self, task: str) -> np.ndarray:
        targets = self.test.targets(task)
        products = self.pool.index.product_ids[np.maximum(self.pool.positions, 0)]
        y = np.zeros(self.pool.positions.shape, dtype=np.int32)
        for row, customer in enumerate(self.pool.customer_ids.tolist()):
            wanted = targets.get(customer)
            if wanted:
                y[row] = np.isin(products[row], list(wanted)) & (self.pool.positions[row] >= 0)
        return y

    def allowed(self, task: str) -> np.ndarray:
        ok = self.pool.positions >= 0
        return ok & ~self.pool.owned if task == "B" else ok


def model_before(frames: LakeFrames, cutoff: datetime, work: Path) -> TrainedModel:
    folder = work / "models" / f"{cutoff:%Y-%m-%d}"
    if not (folder / "model.pt").exists():
        train(frames, cutoff, TwoTowerConfig()).save(folder)
    return TrainedModel.load(folder, device="cpu")


def context(frames: LakeFrames, bought: pl.DataFrame, pool: blend.Candidates, week: datetime):
    """Customer and product signals from purchases before the week."""
    past = before(bought, week)
    days = (pl.lit(week) - pl.col("at").max()).dt.total_seconds() / 86_400
    customers = past.group_by("customer_id").agg(
        pl.col("order_id").n_unique().alias("orders"),
        days.alias("since"),
        pl.col("product_id").n_unique().alias("distinct"),
    )
    per_customer = pl.DataFrame({"customer_id": pool.customer_ids}).join(
        customers, on="customer_id", how="left"
    )
    age = (pl.lit(week) - pl.col("at").min()).dt.total_seconds() / 86_400
    products = past.group_by("product_id").agg(
        pl.col("customer_id").n_unique().alias("buyers"),
        (pl.col("amount").sum() / pl.col("quantity").sum()).alias("price"),
        age.alias("age"),
    )
    per_product = (
        pl.DataFrame({"product_id": pool.index.product_ids})
        .join(products, on="product_id", how="left")
        .join(frames.products.select("product_id", "department"), on="product_id", how="left")
    )

    def column(frame: pl.DataFrame, name: str, fill: float) -> np.ndarray:
        return frame[name].fill_null(fill).to_numpy().astype(np.float32)

    return {
        "c_orders": np.log1p(column(per_customer, "orders", 0)),
        "c_since": column(per_customer, "since", 999),
        "c_distinct": np.log1p(column(per_customer, "distinct", 0)),
        "p_buyers": np.log1p(column(per_product, "buyers", 0)),
        "p_price": column(per_product, "price", np.nan),
        "p_age": column(per_product, "age", 0),
        "p_dept": per_product["department"].rank("dense").fill_null(0).to_numpy().astype("f4"),
    }


def rank_within(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each slot's rank (0: best) by `values` within its customer's pool; -1 for padding."""
    order = np.argsort(-np.where(valid, values, -np.inf), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(order.shape[1]), order.shape), 1)
    return np.where(valid, ranks, -1).astype(np.float32)


def pool_features(
    pool: blend.Candidates, extra: dict[str, np.ndarray], categories: np.ndarray
) -> tuple[list[str], np.ndarray]:
    valid = pool.positions >= 0
    safe = np.maximum(pool.positions, 0)
    model = np.where(np.isfinite(pool.model), pool.model, np.nan).astype(np.float32)
    peak = np.nanmax(np.where(valid, model, np.nan), axis=1, keepdims=True)
    columns = {
        "model": model,
        "popularity": pool.popularity,
        "category": pool.category,
        "owned": pool.owned,
        **{f"repeat_{int(h)}": m for h, m in pool.repeat.items()},
        **pool.features,
        "model_rank": rank_within(np.nan_to_num(model, nan=-9.0), valid),
        "co_purchase_rank": rank_within(pool.features["co_purchase"], valid),
        "trend_rank": rank_within(pool.features["trend"], valid),
        "trend_ratio": pool.features["trend"] - pool.popularity,
        "model_gap": model - peak,
        **{k: np.repeat(extra[k][:, None], valid.shape[1], axis=1) for k in extra if k[0] == "c"},
        **{k: extra[k][safe] for k in extra if k[0] == "p"},
        "p_cat": categories[safe],
    }
    names = list(columns)
    return names, np.stack([np.asarray(columns[k], dtype=np.float32) for k in names], axis=2)


def week_of(frames, bought, trained: TrainedModel, start: datetime) -> Week:
    test = holdout(frames, bought, start)
    _, pool = model_pool(trained, frames, bought, test)
    names, features = pool_features(pool, context(frames, bought, pool, start), test.categories)
    return Week(test, pool, names, features)


def fit(weeks: list[Week], task: str, variant: str) -> tuple[lgb.Booster, list[int]]:
    params, rounds, left_out = VARIANTS[variant]
    columns = [i for i, name in enumerate(weeks[0].names) if name not in left_out]
    rows, labels, groups = [], [], []
    for week in weeks:
        y, ok = week.labels(task), week.allowed(task)
        if params["objective"] == "lambdarank":
            ok = ok & ((y > 0) & ok).any(axis=1, keepdims=True)
        for row in np.flatnonzero(ok.any(axis=1)):
            rows.append(week.features[row][ok[row]][:, columns])
            labels.append(y[row][ok[row]])
            groups.append(int(ok[row].sum()))
    data = lgb.Dataset(
        np.concatenate(rows),
        np.concatenate(labels),
        group=groups if params["objective"] == "lambdarank" else None,
    )
    return lgb.train(params, data, rounds), columns


def ranked_lists(week: Week, task: str, score: np.ndarray) -> dict[int, list[int]]:
    score = np.where(week.allowed(task), score, -np.inf)
    lists = {}
    for row, slots in enumerate(best_positions(score, LIST_LENGTH)):
        slots = slots[np.isfinite(score[row, slots])]
        products = week.pool.index.product_ids[week.pool.positions[row, slots]]
        lists[int(week.pool.customer_ids[row])] = products.tolist()
    return lists


def figures(week: Week, task: str, lists: dict[int, list[int]]) -> dict[str, float]:
    test = week.test
    overall = evaluate_task(
        lists, test.targets(task), test.bought_before, test.segments, len(test.index)
    )[0]
    return {k: round(overall[k], 4) for k in ("hr@5", "ndcg@5", "coverage@5")}


def ranker_figures(train_weeks: list[Week], week: Week, task: str, variant: str) -> dict:
    booster, columns = fit(train_weeks, task, variant)
    ok = week.allowed(task)
    score = np.full(ok.shape, -np.inf)
    score[ok] = booster.predict(week.features[:, :, columns][ok], num_threads=1)
    return figures(week, task, ranked_lists(week, task, score))


def ceiling(week: Week, task: str) -> dict[str, float]:
    targets = week.test.targets(task)
    hits = (week.labels(task) > 0) & week.allowed(task)
    rows = np.isin(week.pool.customer_ids, list(targets))
    return {
        "customers_with_a_target_in_pool": round(float(hits[rows].any(axis=1).mean()), 4),
        "pool_size": round(float(week.allowed(task)[rows].sum(axis=1).mean()), 1),
        "targets_in_pool": round(hits.sum() / max(sum(len(t) for t in targets.values()), 1), 4),
    }


def run_cutoff(frames: LakeFrames, cutoff: datetime, tasks: list[str], work: Path) -> dict:
    bought = purchases(frames)
    day = timedelta(days=7)
    early = model_before(frames, cutoff - 4 * day, work)
    late = model_before(frames, cutoff - 2 * day, work)
    weeks = [
        week_of(frames, bought, early, cutoff - 4 * day),
        week_of(frames, bought, early, cutoff - 3 * day),
        week_of(frames, bought, late, cutoff - 2 * day),
        week_of(frames, bought, late, cutoff - day),
    ]
    test = week_of(frames, bought, model_before(frames, cutoff, work), cutoff)
    result = {}
    for task in tasks:
        tuned, _ = blend.tune_weeks(
            [(w.pool, w.test.targets(task)) for w in weeks[2:]], allow_repeats=task == "A"
        )
        out = {
            "ceiling": ceiling(test, task),
            "blend": figures(test, task, blend.recommend(test.pool, tuned, LIST_LENGTH)),
            "validation_week": {},
            "test_week": {},
        }
        for variant in VARIANTS:
            out["validation_week"][variant] = ranker_figures(weeks[:3], weeks[3], task, variant)
            out["test_week"][variant] = ranker_figures(weeks, test, task, variant)
            log.info("%s task %s %s: %s", f"{cutoff:%Y-%m-%d}", task, variant, out)
        out["chosen"] = max(VARIANTS, key=lambda v: out["validation_week"][v]["ndcg@5"])
        result[task] = out
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--cutoffs", nargs="+", required=True)
    parser.add_argument("--tasks", nargs="+", default=["B"], choices=["A", "B"])
    parser.add_argument("--work", default="data/ranker_experiment")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    frames = read_lake(args.lake)
    results = {
        c: run_cutoff(frames, as_cutoff(c), args.tasks, Path(args.work)) for c in args.cutoffs
    }
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

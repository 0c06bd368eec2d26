"""Whether the learned task-A rule ranks better with more of a customer's own buying rhythm:
days since they last bought the product, their usual interval for it, the share of their
orders that held it, whether their last order held it, and how many orders they made. Also
the rank average of the rule and the weights. Not run by the product.

    python -m experiments.repeat_timing --lake data/completejourney/lake

Validation weeks only (the candidate pools of `experiments.learned_rule_weeks`, built as
`make evaluate` builds them); each setup fits on earlier weeks and scores a later one.

Measured (2026-12-05), task-A NDCG@5 / HR@5:

    fit on                  score  weights      rule         rule+timing  rank avg     avg(+timing)
    10-16,10-23,10-30,11-06 11-20  .3095/.6358  .3156/.6387  .3176/.6460  .3143/.6431  .3158/.6431
    10-16,10-23,10-30,11-06 11-27  .3701/.7163  .3807/.7209  .3782/.7148  .3761/.7201  .3752/.7209
    10-30,11-06,11-20       11-27  .3701/.7163  .3773/.7209  .3790/.7239  .3761/.7231  .3761/.7247
    10-16,10-23,10-30       11-06  .3553/.6920  .3677/.7040  .3684/.7107  .3660/.7025  .3659/.6995

The timing signals move NDCG@5 by -.0025 to +.0020 (mean +.0005), inside a week's noise, so
the rule does not take them: its repeat strengths at three half-lives, order count and `due`
already carry the rhythm. The rank average ranks below the rule in every week.
"""

import numpy as np
import polars as pl

from contoso_recs.recommender import learned
from contoso_recs.recommender.blend import SHIPPED_BLENDS, _lookup, recommend
from contoso_recs.recommender.data import as_cutoff, before, purchases, read_lake
from contoso_recs.recommender.ranking import customer_product_matrix
from experiments.learned_rule_als import task_a
from experiments.learned_rule_weeks import scored_weeks

TIMING = ("since", "interval", "order_share", "in_last_order", "customer_orders")
SETUPS = (
    (("2017-10-16", "2017-10-23", "2017-10-30", "2017-11-06"), "2017-11-20"),
    (("2017-10-16", "2017-10-23", "2017-10-30", "2017-11-06"), "2017-11-27"),
    (("2017-10-30", "2017-11-06", "2017-11-20"), "2017-11-27"),
    (("2017-10-16", "2017-10-23", "2017-10-30"), "2017-11-06"),
)


def add_timing(pool, bought: pl.DataFrame, week: str) -> None:
    """Put the TIMING signals of the pool's slots into pool.features."""
    cutoff = as_cutoff(week)
    seen = before(bought, cutoff).filter(pl.col("customer_id").is_in(pool.customer_ids.tolist()))
    per_order = seen.unique(["customer_id", "order_id"]).select("customer_id", "order_id", "at")
    last_orders = per_order.sort("at").group_by("customer_id").agg(pl.col("order_id").last())
    orders = per_order.group_by("customer_id").agg(pl.len().alias("n"))
    pairs = (
        seen.group_by("customer_id", "product_id")
        .agg(
            pl.col("order_id").n_unique().alias("orders"),
            pl.col("at").min().alias("first_at"),
            pl.col("at").max().alias("last_at"),
        )
        .join(orders, on="customer_id")
        .with_columns(
            # +1 so that 0 in the sparse lookup means "never bought"
            (1 + (pl.lit(cutoff) - pl.col("last_at")).dt.total_seconds() / 86_400.0).alias("since"),
            pl.when(pl.col("orders") >= 2)
            .then(
                1
                + (pl.col("last_at") - pl.col("first_at")).dt.total_seconds()
                / 86_400.0
                / (pl.col("orders") - 1)
            )
            .otherwise(0.0)
            .alias("interval"),
            (pl.col("orders") / pl.col("n")).alias("order_share"),
        )
    )
    last = (
        seen.join(last_orders, on=["customer_id", "order_id"])
        .unique(["customer_id", "product_id"])
        .with_columns(pl.lit(1.0).alias("hit"))
    )
    ids, index, positions = pool.customer_ids, pool.index, pool.positions

    def lookup(frame, column):
        return _lookup(customer_product_matrix(frame, ids, index, column), positions)

    since = lookup(pairs, "since")
    interval = lookup(pairs, "interval")
    pool.features["since"] = np.where(since > 0, np.log(since), np.nan).astype(np.float32)
    pool.features["interval"] = np.where(interval > 0, np.log(interval), np.nan).astype(np.float32)
    pool.features["order_share"] = lookup(pairs, "order_share")
    pool.features["in_last_order"] = lookup(last, "hit")
    counts = dict(zip(orders["customer_id"].to_list(), orders["n"].to_list(), strict=True))
    per_row = np.log1p([counts.get(int(c), 0) for c in ids]).astype(np.float32)
    pool.features["customer_orders"] = np.broadcast_to(per_row[:, None], positions.shape).copy()


BASE_FEATURES = learned.FEATURES
base_features_fn = learned.features


def with_timing(pool) -> np.ndarray:
    wanted = learned.FEATURES
    learned.FEATURES = BASE_FEATURES
    try:
        base = base_features_fn(pool)
    finally:
        learned.FEATURES = wanted
    extra = [pool.features[name] for name in wanted if name in TIMING]
    if not extra:
        return base
    return np.concatenate([base, np.stack(extra, axis=-1).astype(np.float32)], axis=-1)


class RankAverage:
    """The mean of the rule's and the weights' ranks of each slot (lower is better)."""

    allow_repeats = True

    def __init__(self, *rules):
        self.rules = rules

    def scores(self, pool):
        total = 0.0
        for rule in self.rules:
            s = rule.scores(pool)
            ranks = np.argsort(np.argsort(-s, axis=1, kind="stable"), axis=1)
            total = total + ranks
        return np.where(pool.positions >= 0, -total.astype(np.float64), -np.inf)


def main() -> None:
    args, weeks = scored_weeks(__doc__.splitlines()[0])
    bought = purchases(read_lake(str(args.lake)))
    for week, (_, pool) in weeks.items():
        add_timing(pool, bought, week)
    explain = SHIPPED_BLENDS["A"]
    learned.features = with_timing
    print(  # noqa: T201 (a console report)
        "NDCG@5 / HR@5: weights, rule, rule+timing, rank avg(rule, weights), "
        "avg(rule+timing, weights)"
    )
    for fitted_on, scored in SETUPS:
        test, pool = weeks[scored]
        training = [(weeks[w][1], weeks[w][0].targets("A")) for w in fitted_on]
        learned.FEATURES = BASE_FEATURES
        rule = learned.fit(training, explain)
        learned.FEATURES = (*BASE_FEATURES, *TIMING)
        timed = learned.fit(training, explain)
        cells = [task_a(recommend(pool, explain, 10), test)]
        learned.FEATURES = BASE_FEATURES
        cells.append(task_a(recommend(pool, rule, 10), test))
        average = task_a(recommend(pool, RankAverage(rule, explain), 10), test)
        learned.FEATURES = (*BASE_FEATURES, *TIMING)
        cells.append(task_a(recommend(pool, timed, 10), test))
        cells.append(average)
        cells.append(task_a(recommend(pool, RankAverage(timed, explain), 10), test))
        setup = f"fit {'+'.join(w[5:] for w in fitted_on)}, score {scored[5:]}: "
        print(setup + "  ".join(cells), flush=True)  # noqa: T201


if __name__ == "__main__":
    main()

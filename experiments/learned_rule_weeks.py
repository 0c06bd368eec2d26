"""How many weeks the learned task-A rule should learn from: the measurement behind
`learned.RULE_WEEKS`. Not run by the product.

    python -m experiments.learned_rule_weeks --lake data/completejourney/lake

Validation weeks of The Complete Journey only, none of them a test week of `make evaluate`:
2017-10-02 and 10-09 scored by a model trained before 10-02, 10-16 and 10-23 by one trained
before 10-16, 10-30 and 11-06 by one trained
before 10-30, 11-20 and 11-27 by one trained before 11-20 (models kept under --models, shared
with experiments.als_weight), the candidates built as `make evaluate` builds them. The figures
here and in the experiments that share these pools were measured with models of 4 epochs, kept
from before 8 became the default; a fresh folder trains 8. Each setup
fits the rule on some weeks and scores a later one; task-A NDCG@5 / HR@5 of the shipped
weights and of the rule.

Measured (2026-12-05): NDCG@5 / HR@5, weights / rule

    fit 10-30+11-06,              score 11-20   .3095/.6358   .3141/.6380
    fit 10-16+10-23+10-30+11-06,  score 11-20   .3095/.6358   .3156/.6387
    fit 11-20,                    score 11-27   .3701/.7163   .3688/.7148
    fit 11-06+11-20,              score 11-27   .3701/.7163   .3738/.7179
    fit 10-30+11-06+11-20,        score 11-27   .3701/.7163   .3773/.7209
    fit 10-30+11-06,              score 11-27   .3701/.7163   .3773/.7163
    fit 10-16+10-23+10-30+11-06,  score 11-27   .3701/.7163   .3807/.7209
    fit 10-16+10-23,              score 11-06   .3553/.6920   .3630/.7025
    fit 10-16+10-23+10-30,        score 11-06   .3553/.6920   .3677/.7040

More weeks ranked better in every comparison, by .0015 to .0085 NDCG@5; a rule fit on the
Thanksgiving week (11-20) alone ranked the week after it below the weights.

Past four weeks the gain fades (measured 2026-12-05, the same figures as above where a setup
repeats):

    fit 10-16..11-06 (4),          score 11-20   .3095/.6358   .3156/.6387
    fit 10-02..11-06 (6),          score 11-20   .3095/.6358   .3163/.6387
    fit 10-16..11-06 (4),          score 11-27   .3701/.7163   .3807/.7209
    fit 10-02..11-06 (6),          score 11-27   .3701/.7163   .3817/.7269
    fit 10-23..11-20 (4),          score 11-27   .3701/.7163   .3790/.7231
    fit 10-09..11-20 (6),          score 11-27   .3701/.7163   .3807/.7194
    fit 10-02..11-20 (7),          score 11-27   .3701/.7163   .3829/.7239
    fit 10-16..10-30 (3),          score 11-06   .3553/.6920   .3677/.7040
    fit 10-02..10-30 (5),          score 11-06   .3553/.6920   .3679/.7077
    fit 10-16+10-23 (2),           score 10-30   .3447/.6957   .3541/.7037
    fit 10-02..10-23 (4),          score 10-30   .3447/.6957   .3535/.7030

Six weeks against four: +.0002 to +.0017 NDCG@5; four against two on 10-30: -.0006. So
`learned.RULE_WEEKS` stays 4: each further week adds its rows to every weekly fit and a model
to train at each cutoff of `make evaluate`, for a gain inside a week's noise.
"""

import argparse
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import torch

from contoso_recs.recommender import evaluate, learned
from contoso_recs.recommender.blend import SHIPPED_BLENDS, mailer_shares, recommend
from contoso_recs.recommender.data import as_cutoff, purchases, read_lake
from experiments.als_weight import model_before
from experiments.learned_rule_als import task_a

MODELS = {
    "2017-10-02": ("2017-10-02", "2017-10-09"),
    "2017-10-16": ("2017-10-16", "2017-10-23"),
    "2017-10-30": ("2017-10-30", "2017-11-06"),
    "2017-11-20": ("2017-11-20", "2017-11-27"),
}
SETUPS = (
    (("2017-10-30", "2017-11-06"), "2017-11-20"),
    (("2017-10-16", "2017-10-23", "2017-10-30", "2017-11-06"), "2017-11-20"),
    (("2017-11-20",), "2017-11-27"),
    (("2017-11-06", "2017-11-20"), "2017-11-27"),
    (("2017-10-30", "2017-11-06", "2017-11-20"), "2017-11-27"),
    (("2017-10-30", "2017-11-06"), "2017-11-27"),
    (("2017-10-16", "2017-10-23", "2017-10-30", "2017-11-06"), "2017-11-27"),
    (("2017-10-16", "2017-10-23"), "2017-11-06"),
    (("2017-10-16", "2017-10-23", "2017-10-30"), "2017-11-06"),
)
WEEKS = ("2017-10-02", "2017-10-09", "2017-10-16", "2017-10-23", "2017-10-30", "2017-11-06")
LONGER = (
    (WEEKS[2:6], "2017-11-20"),
    (WEEKS[0:6], "2017-11-20"),
    (WEEKS[2:6], "2017-11-27"),
    (WEEKS[0:6], "2017-11-27"),
    ((*WEEKS[3:6], "2017-11-20"), "2017-11-27"),
    ((*WEEKS[1:6], "2017-11-20"), "2017-11-27"),
    ((*WEEKS, "2017-11-20"), "2017-11-27"),
    (WEEKS[2:5], "2017-11-06"),
    (WEEKS[0:5], "2017-11-06"),
    (WEEKS[2:4], "2017-10-30"),
    (WEEKS[0:4], "2017-10-30"),
)


def week_pools(lake: Path, models: Path, cache: Path) -> dict:
    """{week: (holdout, candidates)} of every scored week, kept in `cache` once built."""
    scored = {week for weeks in MODELS.values() for week in weeks}
    frames = read_lake(str(lake))
    if cache.exists():
        kept = pickle.loads(cache.read_bytes())
        if scored <= kept.keys():
            return {
                week: with_mailer(week_pool, frames.promotions) for week, week_pool in kept.items()
            }
    bought = purchases(frames)
    weeks = {}
    for model_cutoff, scored in MODELS.items():
        trained = model_before(frames, as_cutoff(model_cutoff), models, model_cutoff)
        for week in scored:
            test = evaluate.holdout(frames, bought, as_cutoff(week))
            weeks[week] = (test, evaluate.model_pool(trained, frames, bought, test)[1])
            test._als.clear()  # fitted ALS factors are not needed again and do not pickle
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(weeks))
    return weeks


def with_mailer(week_pool: tuple, promotions: pl.DataFrame) -> tuple:
    """A (holdout, candidates) kept before the pools carried the week's mailer, with it."""
    test, pool = week_pool
    if "mailer" in pool.features:
        return week_pool
    shares = mailer_shares(promotions, test.cutoff, pool.index)
    mailer = np.where(pool.positions >= 0, shares[np.maximum(pool.positions, 0)], 0.0)
    return test, replace(pool, features={**pool.features, "mailer": mailer.astype(np.float32)})


def scored_weeks(description: str) -> tuple[argparse.Namespace, dict]:
    """The command line of a validation-week experiment, and the week pools it names."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--lake", type=Path, default=Path("data/completejourney/lake"))
    parser.add_argument("--models", type=Path, default=Path("data/experiments/als_weight"))
    parser.add_argument("--cache", type=Path, default=Path("data/experiments/rule_weeks.pkl"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    return args, week_pools(args.lake, args.models, args.cache)


def main() -> None:
    _, weeks = scored_weeks(__doc__.splitlines()[0])
    explain = SHIPPED_BLENDS["A"]
    print("NDCG@5 / HR@5: weights, rule")  # noqa: T201 (a console report)
    for fitted_on, scored in (*SETUPS, *LONGER):
        test, pool = weeks[scored]
        rule = learned.fit([(weeks[w][1], weeks[w][0].targets("A")) for w in fitted_on], explain)
        cells = [
            task_a(recommend(pool, explain, 10), test),
            task_a(recommend(pool, rule, 10), test),
        ]
        print(f"fit {'+'.join(w[5:] for w in fitted_on)}, score {scored[5:]}: " + "  ".join(cells))  # noqa: T201


if __name__ == "__main__":
    main()

"""How many weeks the learned task-A rule should learn from: the measurement behind
`learned.RULE_WEEKS`. Not run by the product.

    python -m experiments.learned_rule_weeks --lake data/completejourney/lake

Validation weeks of The Complete Journey only, none of them a test week of `make evaluate`:
2017-10-16 and 10-23 scored by a model trained before 10-16, 10-30 and 11-06 by one trained
before 10-30, 11-20 and 11-27 by one trained before 11-20 (models kept under --models, shared
with experiments.als_weight), the candidates built as `make evaluate` builds them. Each setup
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
"""

import argparse
import pickle
from pathlib import Path

import torch

from contoso_recs.recommender import evaluate, learned
from contoso_recs.recommender.blend import SHIPPED_BLENDS, recommend
from contoso_recs.recommender.data import as_cutoff, purchases, read_lake
from experiments.als_weight import model_before
from experiments.learned_rule_als import task_a

MODELS = {
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


def week_pools(lake: Path, models: Path, cache: Path) -> dict:
    """{week: (holdout, candidates)} of every scored week, kept in `cache` once built."""
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    frames = read_lake(str(lake))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=Path("data/completejourney/lake"))
    parser.add_argument("--models", type=Path, default=Path("data/experiments/als_weight"))
    parser.add_argument("--cache", type=Path, default=Path("data/experiments/rule_weeks.pkl"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    weeks = week_pools(args.lake, args.models, args.cache)
    explain = SHIPPED_BLENDS["A"]
    print("NDCG@5 / HR@5: weights, rule")  # noqa: T201 (a console report)
    for fitted_on, scored in SETUPS:
        test, pool = weeks[scored]
        rule = learned.fit([(weeks[w][1], weeks[w][0].targets("A")) for w in fitted_on], explain)
        cells = [
            task_a(recommend(pool, explain, 10), test),
            task_a(recommend(pool, rule, 10), test),
        ]
        print(f"fit {'+'.join(w[5:] for w in fitted_on)}, score {scored[5:]}: " + "  ".join(cells))  # noqa: T201


if __name__ == "__main__":
    main()

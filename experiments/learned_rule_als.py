"""Would the learned task-A rule gain from ALS preference as one more signal? Not shipped.

    python -m experiments.learned_rule_als --lake data/completejourney/lake

On validation weeks of The Complete Journey only (before both evaluation cutoffs), with the
pools `make evaluate` builds: 2017-10-16 and 10-23 scored by a model trained before 10-16,
10-30 and 11-06 by one trained before 10-30 (models kept under --models, shared with
experiments.als_weight). Rules fit on 10-16 + 10-23 are scored on 10-30 and on 11-06 (a newer
model); a rule fit on one week is scored on the next with the same model, as the weekly retrain
does. Task-A NDCG@5 / HR@5 of the shipped weights, of the rule on `learned.FEATURES` and of the
rule on those plus `als`.

Measured (2026-12-05): NDCG@5 / HR@5, weights / FEATURES / FEATURES + als

    fit 10-16+10-23, score 10-30   .3447/.6957   .3541/.7037   .3536/.7015
    fit 10-16+10-23, score 11-06   .3553/.6920   .3630/.7025   .3633/.7077
    fit 10-30,       score 11-06   .3553/.6920   .3658/.7032   .3657/.7002
    fit 10-16,       score 10-23   .3468/.6971   .3515/.6987   .3537/.6933

Mean NDCG@5 .3586 against .3591 with ALS, HR@5 .7020 against .7007: no gain worth a fit of
minutes at millions of customers, so the task-A rule does not read ALS.
"""

import argparse
from pathlib import Path

import torch

from contoso_recs.recommender import evaluate, learned
from contoso_recs.recommender.blend import SHIPPED_BLENDS, recommend
from contoso_recs.recommender.data import as_cutoff, purchases, read_lake
from contoso_recs.recommender.metrics import evaluate_task
from experiments.als_weight import COMPLETE_JOURNEY_WEEKS, model_before

SETUPS = (
    (("2017-10-16", "2017-10-23"), "2017-10-30"),
    (("2017-10-16", "2017-10-23"), "2017-11-06"),
    (("2017-10-30",), "2017-11-06"),
    (("2017-10-16",), "2017-10-23"),
)


def task_a(lists, test: evaluate.Holdout) -> str:
    overall, _ = evaluate_task(
        lists, test.targets("A"), test.bought_before, test.segments, len(test.index)
    )
    return f"{overall['ndcg@5']:.4f}/{overall['hr@5']:.4f}"


def rule_cells(weeks: dict, fitted_on, scored: str, feature_sets) -> list[str]:
    """Task-A NDCG@5 / HR@5 on week `scored` of the shipped weights, then of a rule fit on
    `fitted_on` with each of `feature_sets` as `learned.FEATURES`."""
    test, pool = weeks[scored]
    explain = SHIPPED_BLENDS["A"]
    cells = [task_a(recommend(pool, explain, 10), test)]
    shipped = learned.FEATURES
    for names in feature_sets:
        learned.FEATURES = names  # features() and fit() read the module's FEATURES
        try:
            rule = learned.fit(
                [(weeks[w][1], weeks[w][0].targets("A")) for w in fitted_on], explain
            )
            cells.append(task_a(recommend(pool, rule, 10), test))
        finally:
            learned.FEATURES = shipped
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=Path("data/completejourney/lake"))
    parser.add_argument("--models", type=Path, default=Path("data/experiments/als_weight"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    frames = read_lake(str(args.lake))
    bought = purchases(frames)
    weeks = {}
    for model_cutoff, scored in COMPLETE_JOURNEY_WEEKS.items():
        trained = model_before(frames, as_cutoff(model_cutoff), args.models, model_cutoff)
        for week in scored:
            test = evaluate.holdout(frames, bought, as_cutoff(week))
            weeks[week] = (test, evaluate.model_pool(trained, frames, bought, test)[1])
    shipped = learned.FEATURES
    print("NDCG@5 / HR@5: weights, FEATURES, FEATURES + als")  # noqa: T201 (a console report)
    for fitted_on, scored in SETUPS:
        cells = rule_cells(weeks, fitted_on, scored, (shipped, (*shipped, "als")))
        print(f"fit {'+'.join(fitted_on)}, score {scored}: " + "  ".join(cells), flush=True)  # noqa: T201


if __name__ == "__main__":
    main()

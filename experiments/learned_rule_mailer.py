"""Would the learned task-A rule gain from the week's mailer as one more signal? The measurement
behind `mailer` in `learned.FEATURES`. Not run by the product.

    python -m experiments.learned_rule_mailer --lake data/completejourney/lake

The validation weeks and pools of experiments.learned_rule_weeks (2017-10-02 to 11-27, none a
test week of `make evaluate`, each scored by a model trained before it), the mailer share of
each week added from the lake's promotion plan. Each setup fits the rule on four weeks and
scores a later one, as `make evaluate` and the weekly retrain fit it. Task-A NDCG@5 / HR@5 of
the shipped weights, of the rule on the other signals and of the rule with the mailer.

Measured (2026-12-05): NDCG@5 / HR@5, weights / rule / rule + mailer

    fit 10-02..10-23, score 10-30   .3447/.6957   .3535/.7030   .3593/.7058
    fit 10-09..10-30, score 11-06   .3553/.6920   .3699/.7084   .3734/.7062
    fit 10-16..11-06, score 11-20   .3095/.6358   .3156/.6387   .3158/.6431
    fit 10-16..11-06, score 11-27   .3701/.7163   .3807/.7209   .3834/.7284
    fit 10-23..11-20, score 11-27   .3701/.7163   .3790/.7231   .3846/.7254

The mailer raised NDCG@5 in all five setups (+.0002 to +.0058, mean +.0036) and HR@5 in four
(mean +.0030), so the rule reads it. (The rule's own figures repeat those of
experiments.learned_rule_weeks.)
"""

from contoso_recs.recommender import learned
from experiments.learned_rule_als import rule_cells
from experiments.learned_rule_weeks import scored_weeks

WEEKS = ("2017-10-02", "2017-10-09", "2017-10-16", "2017-10-23", "2017-10-30", "2017-11-06")
SETUPS = (
    (WEEKS[0:4], "2017-10-30"),
    (WEEKS[1:5], "2017-11-06"),
    (WEEKS[2:6], "2017-11-20"),
    (WEEKS[2:6], "2017-11-27"),
    (("2017-10-23", "2017-10-30", "2017-11-06", "2017-11-20"), "2017-11-27"),
)


def main() -> None:
    _, weeks = scored_weeks(__doc__.splitlines()[0])
    without = tuple(name for name in learned.FEATURES if name != "mailer")
    print("NDCG@5 / HR@5: weights, rule, rule + mailer")  # noqa: T201 (a console report)
    for fitted_on, scored in SETUPS:
        cells = rule_cells(weeks, fitted_on, scored, (without, (*without, "mailer")))
        span = f"{fitted_on[0][5:]}..{fitted_on[-1][5:]}"
        print(f"fit {span}, score {scored[5:]}: " + "  ".join(cells), flush=True)  # noqa: T201


if __name__ == "__main__":
    main()

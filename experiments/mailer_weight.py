"""The task-B blend's mailer term: the measurement behind `mailer_weight` in
`blend.SHIPPED_BLENDS["B"]`. Not run by the product.

    python -m experiments.mailer_weight --lake data/completejourney/lake

The validation weeks of experiments.learned_rule_weeks (2017-10-02 to 11-27, none a test week of
`make evaluate`, each scored by a model trained before it; pools cached under --cache), ranked
by the shipped task-B weights with the mailer term at each weight tried: the share of stores
whose mailer features the product in the week, from the lake's promotion plan. Task-B HR@5 /
NDCG@5 and the distinct products shown, per week and mean.

Measured (2026-12-05) on the eight weeks, weight 0 / 0.1 / 0.2 / 0.3 / 0.5 / 1: mean HR@5
.0859 / .0970 / .0949 / .0928 / .0925 / .0932, NDCG@5 .0213 / .0244 / .0241 / .0235 / .0235 /
.0236. Weight 0.1 raised HR@5 in seven weeks of eight (10-02: .0964 to .0909), by up to .033
(10-16); distinct products shown fell from about 240 to 210 (0.2: 170). Taken at 0.1. A scratch
run that gave each customer the mailer of the store they visited most in the 84 days before the
week scored alike (.0965 / .0244), so the plan keeps one row per week and product, with the share
of stores.
"""

from dataclasses import replace

from contoso_recs.recommender.blend import SHIPPED_BLENDS, recommend
from contoso_recs.recommender.data import read_lake
from experiments.learned_rule_weeks import scored_weeks
from experiments.task_b_category_cap import print_weeks, task_b_figures

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)


def main() -> None:
    args, weeks = scored_weeks(__doc__.splitlines()[0])
    promotions = read_lake(str(args.lake)).promotions
    if promotions.is_empty():
        raise SystemExit(f"{args.lake} has no promotion plan: rebuild it with make evaluate")
    figures = {}
    for week, (test, pool) in sorted(weeks.items()):
        rules = [replace(SHIPPED_BLENDS["B"], mailer_weight=weight) for weight in WEIGHTS]
        figures[week] = [task_b_figures(recommend(pool, r, 5), test.targets("B")) for r in rules]
    print_weeks([f"w {weight}" for weight in WEIGHTS], figures)


if __name__ == "__main__":
    main()

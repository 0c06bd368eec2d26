"""At most N products of one category in a task-B top 5: the measurement behind
`max_per_category` in `blend.SHIPPED_BLENDS["B"]`. Not run by the product.

    python -m experiments.task_b_category_cap --lake data/completejourney/lake

The validation weeks of experiments.learned_rule_weeks (2017-10-02 to 11-27, none a test week of
`make evaluate`, each scored by a model trained before it; pools cached under --cache), ranked by
the shipped task-B weights, then filled top down skipping a product whose category already has
N products in the list. Task-B HR@5 / NDCG@5 and the distinct products shown, per week and mean.

Measured (2026-12-05) on the eight weeks, cap 5 (none) / 2 / 1: mean HR@5 .0859 / .0855 / .0862,
NDCG@5 .0213 / .0212 / .0213. One a category moved HR@5 by -.0071 to +.0072 a week (up in five
weeks, down in three: 10-02, 10-09, 11-20), within a week's noise (about ±.015); on the six weeks
from 10-16 alone it looked like +.0023. Distinct products shown moved from about 240 to 250 of
89,000: diversity within a list does not reach coverage@5. Not taken.

Measured again (2026-12-05) once the shipped weights read the week's mailer, cap 5 / 2 / 1: mean
HR@5 .0970 / .0986 / .1018, NDCG@5 .0244 / .0246 / .0253. One a category now raised HR@5 in six
weeks of eight (+.0039 to +.0082; 11-20 -.0023, 11-27 unchanged). Taken at 1: the blend's
`max_per_category`, which fills lists from the 50 best candidates and scores the same on these
weeks (.1018 / .0253).
"""

import numpy as np

from contoso_recs.recommender.blend import SHIPPED_BLENDS
from contoso_recs.recommender.data import read_lake
from contoso_recs.recommender.metrics import hit_rate, ndcg
from experiments.learned_rule_weeks import scored_weeks

CAPS = (5, 2, 1)
K = 5


def capped_lists(pool, score: np.ndarray, category: dict[int, str], cap: int) -> dict[int, list]:
    """Each customer's top K by `score`, at most `cap` of one category."""
    lists = {}
    for row in range(score.shape[0]):
        picked, per_category = [], {}
        for slot in np.argsort(-score[row], kind="stable"):
            if not np.isfinite(score[row, slot]) or len(picked) == K:
                break
            product = int(pool.index.product_ids[pool.positions[row, slot]])
            name = category.get(product)
            if per_category.get(name, 0) < cap:
                per_category[name] = per_category.get(name, 0) + 1
                picked.append(product)
        lists[int(pool.customer_ids[row])] = picked
    return lists


def task_b_figures(lists: dict[int, list], targets: dict[int, set]) -> tuple[float, float, int]:
    """Task-B HR@5, NDCG@5 and the distinct products shown, over the week's customers."""
    pairs = [(lists.get(customer, []), bought) for customer, bought in targets.items()]
    return (
        float(np.mean([hit_rate(shown, bought) for shown, bought in pairs])),
        float(np.mean([ndcg(shown, bought) for shown, bought in pairs])),
        len({product for shown, _ in pairs for product in shown}),
    )


def print_weeks(labels: list[str], weeks: dict[str, list[tuple]]) -> None:
    """Per week, each setting's HR@5 / NDCG@5 / distinct products; then the mean over weeks."""
    for week, row in weeks.items():
        cells = "  ".join(f"{label}: {h:.4f} / {n:.4f} / {d}" for label, (h, n, d) in zip(
            labels, row, strict=True))  # fmt: skip
        print(f"{week}  {cells}", flush=True)  # noqa: T201 (a console report)
    mean = np.mean(np.asarray(list(weeks.values()), dtype=float), axis=0)
    cells = "  ".join(f"{label}: {h:.4f} / {n:.4f}" for label, (h, n, _) in zip(
        labels, mean, strict=True))  # fmt: skip
    print(f"mean        {cells}")  # noqa: T201


def main() -> None:
    args, weeks = scored_weeks(__doc__.splitlines()[0])
    products = read_lake(str(args.lake)).products
    category = dict(zip(products["product_id"], products["category"], strict=True))
    figures = {}
    for week, (test, pool) in sorted(weeks.items()):
        targets = test.targets("B")
        score = SHIPPED_BLENDS["B"].scores(pool)
        figures[week] = [
            task_b_figures(capped_lists(pool, score, category, cap), targets) for cap in CAPS
        ]
    print_weeks([f"cap {cap}" for cap in CAPS], figures)


if __name__ == "__main__":
    main()

"""What task-B coverage@5 costs in hit rate: the measurement behind leaving the shipped task-B
blend without a diversity rule. Not run by the product.

    python -m experiments.task_b_coverage --lake data/completejourney/lake

The validation weeks of experiments.learned_rule_weeks (2017-10-02 to 11-27, none a test week of
`make evaluate`, each scored by a model trained before it; pools cached under --cache), ranked as
the weekly table ranks task B (the shipped weights, one product a category), then two ways of
showing more of the catalogue:

- `pop W`: the shipped weights with the popularity weight W (shipped: 0.02), below 0 a penalty
  on products many customers buy;
- `tail N`: the shipped top 5 - N, then the N best candidates under the same weights among the
  products outside the 1,000 best sellers of the 28 days before the week.

Per setting, mean task-B HR@5 / NDCG@5 over the weeks and the distinct products shown, with
coverage@5 (distinct products over the week's catalogue, as `make evaluate` counts it) and the
ceiling: the distinct products in the candidates the blend can show at all.

Measured (2026-12-05) on the eight weeks, mean HR@5 / NDCG@5 / distinct products / coverage@5:

    shipped (pop 0.02)   .1018 / .0253 /  224 / .0026
    pop -0.02            .0930 / .0231 /  497 / .0058
    pop -0.05            .0577 / .0123 /  892 / .0104
    pop -0.1             .0205 / .0036 / 1438 / .0167
    tail 1               .0934 / .0238 /  488 / .0057
    tail 2               .0819 / .0219 /  653 / .0076

The candidates hold about 12,900 distinct products a week that a customer has not bought, so they
do not bind. Coverage@5 of .014 means about 1,200 distinct products over some 1,300 customers'
lists, nearly one of its own in every list. The two settings that showed about 500 lost .008 to
.009 HR@5, lower in every one of the eight weeks, and the penalty that passes 1,200 keeps a fifth
of the hit rate. Not taken: on this data coverage@5 is bought with the hit rate the same issue
asks for.
"""

from dataclasses import replace

import numpy as np

from contoso_recs.recommender.blend import SHIPPED_BLENDS, Candidates, recommend
from experiments.learned_rule_weeks import scored_weeks
from experiments.task_b_category_cap import task_b_figures

K = 5
POPULARITY_WEIGHTS = (0.02, -0.02, -0.05, -0.1)
TAIL_SLOTS = (1, 2)
BEST_SELLERS = 1000


def with_categories(pool: Candidates, categories: np.ndarray) -> Candidates:
    """A cached pool with each slot's category code, so the shipped category limit applies."""
    safe = np.maximum(pool.positions, 0)
    return replace(pool, category_codes=np.where(pool.positions >= 0, categories[safe], 0))


def tail_lists(pool: Candidates, slots: int) -> dict[int, list[int]]:
    """The shipped top K - `slots`, then the `slots` best candidates outside the best sellers."""
    rule = SHIPPED_BLENDS["B"]
    head = recommend(pool, rule, K - slots)
    sales = np.full(len(pool.index), -np.inf)
    shown = pool.positions >= 0
    sales[pool.positions[shown]] = pool.popularity[shown]
    best_sellers = np.argsort(-sales, kind="stable")[:BEST_SELLERS]
    outside = ~np.isin(pool.positions, best_sellers)
    tail_pool = replace(pool, positions=np.where(outside, pool.positions, -1))
    tail = recommend(tail_pool, replace(rule, max_per_category=0), K)
    return {
        customer: picked + [p for p in tail[customer] if p not in picked][:slots]
        for customer, picked in head.items()
    }


def main() -> None:
    _, weeks = scored_weeks(__doc__.splitlines()[0])
    labels = [f"pop {w}" for w in POPULARITY_WEIGHTS] + [f"tail {n}" for n in TAIL_SLOTS]
    rows, ceilings, coverages = [], [], []
    for week, (test, cached) in sorted(weeks.items()):
        pool = with_categories(cached, test.categories)
        targets = test.targets("B")
        lists = [
            recommend(pool, replace(SHIPPED_BLENDS["B"], popularity_weight=w), K)
            for w in POPULARITY_WEIGHTS
        ] + [tail_lists(pool, n) for n in TAIL_SLOTS]
        figures = [task_b_figures(shown, targets) for shown in lists]
        showable = np.unique(pool.positions[(pool.positions >= 0) & ~pool.owned])
        rows.append(figures)
        ceilings.append(len(showable))
        coverages.append([distinct / len(pool.index) for _, _, distinct in figures])
        cells = "  ".join(
            f"{name}: {h:.4f}/{n:.4f}/{d}" for name, (h, n, d) in zip(labels, figures, strict=True)
        )
        print(f"{week}  {cells}  ceiling {len(showable)} of {len(pool.index)}", flush=True)  # noqa: T201
    mean = np.mean(np.asarray(rows, dtype=float), axis=0)
    coverage = np.mean(coverages, axis=0)
    for label, (hr, nd, distinct), cov in zip(labels, mean, coverage, strict=True):
        print(  # noqa: T201 (a console report)
            f"mean {label}: HR@5 {hr:.4f} NDCG@5 {nd:.4f} distinct {distinct:.0f} "
            f"coverage@5 {cov:.4f}"
        )
    print(f"mean ceiling: {np.mean(ceilings):.0f} distinct products in the candidates")  # noqa: T201


if __name__ == "__main__":
    main()

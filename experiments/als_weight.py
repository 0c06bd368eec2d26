"""How much the task-B blend weighs ALS preference: the measurement behind the shipped weight.

    python -m experiments.als_weight --lake data/completejourney/lake --demo-lake data/lake

For each validation week of The Complete Journey that ends before both evaluation cutoffs
(2017-10-16 and 10-23, scored by a model trained on the orders before 10-16; 2017-10-30 and
11-06, by one trained before 10-30) and for the demo data's last full week (a model trained
before it), the blend's candidates are built as `make evaluate` builds them, and the shipped
task-B weights (`blend.SHIPPED_BLENDS["B"]`) are scored with each ALS weight of WEIGHTS: task-B
NDCG@5, HR@5 and the distinct products shown. Trained models are kept under `--models` and
reused. Nothing here reads a test week of `make evaluate`.
"""

import argparse
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from contoso_recs.recommender import evaluate
from contoso_recs.recommender.blend import SHIPPED_BLENDS, ValidationWeek, recommend
from contoso_recs.recommender.data import as_cutoff, purchases, read_lake
from contoso_recs.recommender.metrics import hit_rate
from contoso_recs.recommender.train import TrainedModel, train

WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
COMPLETE_JOURNEY_WEEKS = {
    "2017-10-16": ("2017-10-16", "2017-10-23"),
    "2017-10-30": ("2017-10-30", "2017-11-06"),
}


def model_before(frames, cutoff, models: Path, name: str) -> TrainedModel:
    folder = models / name
    if not (folder / "model.pt").exists():
        train(frames, cutoff).save(folder)
    return TrainedModel.load(folder, "cpu")


def measure(frames, bought, trained: TrainedModel, week) -> list[tuple[float, float, int]]:
    """(NDCG@5, HR@5, distinct products) of the shipped task-B weights per ALS weight."""
    test = evaluate.holdout(frames, bought, week)
    _, pool = evaluate.model_pool(trained, frames, bought, test)
    targets = test.targets("B")
    validation = ValidationWeek.of(pool, targets)
    figures = []
    for weight in WEIGHTS:
        rule = replace(SHIPPED_BLENDS["B"], als_weight=weight)
        lists = recommend(pool, rule, 5)
        hits = np.mean([hit_rate(lists.get(c, []), t) for c, t in targets.items()])
        distinct = len({p for shown in lists.values() for p in shown})
        figures.append((validation.ndcg(rule), float(hits), distinct))
    return figures


def show(name: str, figures: list[tuple[float, float, int]]) -> None:
    cells = "  ".join(f"{n:.4f} / {h:.4f} / {d:>4}" for n, h, d in figures)
    print(f"{name:<28} {cells}", flush=True)  # noqa: T201 (a report for the console)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=Path("data/completejourney/lake"))
    parser.add_argument("--demo-lake", type=Path, default=Path("data/lake"))
    parser.add_argument("--models", type=Path, default=Path("data/experiments/als_weight"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    weights = ", ".join(str(w) for w in WEIGHTS)
    print(f"ALS weights: {weights} (NDCG@5 / HR@5 / products)")  # noqa: T201
    frames = read_lake(str(args.lake))
    bought = purchases(frames)
    rows = []
    for model_cutoff, weeks in COMPLETE_JOURNEY_WEEKS.items():
        trained = model_before(frames, as_cutoff(model_cutoff), args.models, model_cutoff)
        for week in weeks:
            rows.append(measure(frames, bought, trained, as_cutoff(week)))
            show(f"completejourney {week}", rows[-1])
    mean = np.mean(np.asarray(rows, dtype=float), axis=0)
    show("completejourney mean", [(n, h, int(d)) for n, h, d in mean])

    frames = read_lake(str(args.demo_lake))
    bought = purchases(frames)
    latest = bought["at"].max()
    week = as_cutoff(latest.date()) - timedelta(days=latest.weekday() + 7)
    trained = model_before(frames, week, args.models, f"demo-{week:%Y-%m-%d}")
    show(f"demo {week:%Y-%m-%d}", measure(frames, bought, trained, week))


if __name__ == "__main__":
    main()

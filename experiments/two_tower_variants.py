"""The two-tower model alone on validation weeks, for variants of its configuration: the
measurement behind the comment on `TwoTowerConfig.temperature`. Not run by the product.

    python -m experiments.two_tower_variants --lake data/completejourney/lake \
        temperature=0.1 half_life_days=90 final_lr_share=0.1,temperature=0.035

Weeks 2017-10-30 and 11-06 are scored by a model trained before 10-30, 11-20 and 11-27 by one
trained before 11-20. Models are kept and reused by name (the default's are those of
experiments.als_weight, shared, trained with 4 epochs and constant learning rates before 8 epochs
and falling rates became the default); a row whose kept models were trained with other settings
than its name asks for today names them (`as trained: ...`). Mean
task-A and task-B NDCG@5 / HR@5 over the four weeks, then each week's NDCG@5; first the
reference the model alone must beat, ALS (its task-B parameters for task B) on the same weeks.
"""

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from contoso_recs.recommender import blend, evaluate
from contoso_recs.recommender.data import as_cutoff, before, purchases, read_lake
from contoso_recs.recommender.metrics import evaluate_task
from contoso_recs.recommender.ranking import top_k_lists
from contoso_recs.recommender.train import TrainedModel, train
from contoso_recs.recommender.two_tower import TwoTowerConfig

MODELS = {"2017-10-30": ("2017-10-30", "2017-11-06"), "2017-11-20": ("2017-11-20", "2017-11-27")}


def variant(text: str) -> tuple[str, TwoTowerConfig]:
    """`name=value` of TwoTowerConfig fields (several joined by commas), as a named config."""
    changes = {}
    for setting in text.split(","):
        name, value = setting.split("=", 1)
        default = getattr(TwoTowerConfig(), name)
        cast = (lambda v: v == "true") if isinstance(default, bool) else type(default)
        changes[name] = cast(value)
    return text, replace(TwoTowerConfig(), **changes)


def model_alone(trained: TrainedModel, frames, bought, test) -> dict[str, tuple[float, float]]:
    scores = blend.two_tower_scores(
        trained,
        before(bought, test.cutoff),
        before(frames.customers, test.cutoff, "created_at"),
        test.customer_ids,
        test.cutoff,
        test.index,
        before(frames.product_views, test.cutoff, "viewed_at"),
    )
    figures = {}
    for task in ("A", "B"):
        exclude = test.owned if task == "B" else None
        lists = top_k_lists(lambda rows: scores[rows], test.customer_ids, test.index, 10, exclude)
        figures[task] = ndcg_hr(lists, test, task)
    return figures


def als_alone(bought, test) -> dict[str, tuple[float, float]]:
    """The ALS baseline's figures per task, as `make evaluate` computes them."""
    return {
        task: ndcg_hr(evaluate.baseline_lists(bought, test, task)["als"], test, task)
        for task in ("A", "B")
    }


def ndcg_hr(lists: dict, test, task: str) -> tuple[float, float]:
    overall, _ = evaluate_task(
        lists, test.targets(task), test.bought_before, test.segments, len(test.index)
    )
    return overall["ndcg@5"], overall["hr@5"]


def print_row(name: str, cells: dict[str, list[tuple[float, float]]]) -> None:
    report = "  ".join(
        f"{task} {np.mean([n for n, _ in c]):.4f} / {np.mean([h for _, h in c]):.4f} "
        f"({' '.join(f'{n:.4f}' for n, _ in c)})"
        for task, c in cells.items()
    )
    print(f"{name:<24} {report}", flush=True)  # noqa: T201 (a console report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=Path("data/completejourney/lake"))
    parser.add_argument("--models", type=Path, default=Path("data/experiments"))
    parser.add_argument("variants", nargs="*", type=variant, help="name=value of TwoTowerConfig")
    args = parser.parse_args()
    torch.set_num_threads(1)
    frames = read_lake(str(args.lake))
    bought = purchases(frames)
    weeks = [w for scored in MODELS.values() for w in scored]
    tests = {week: evaluate.holdout(frames, bought, as_cutoff(week)) for week in weeks}
    reference: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    for week in weeks:
        for task, figures in als_alone(bought, tests[week]).items():
            reference[task].append(figures)
    print_row("als (the reference)", reference)
    for name, config in [("default", TwoTowerConfig()), *args.variants]:
        cells: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
        differences: set[str] = set()
        for model_cutoff, scored in MODELS.items():
            kept = "als_weight" if name == "default" else f"two_tower_{name}"
            folder = args.models / kept / model_cutoff
            if not (folder / "model.pt").exists():
                train(frames, as_cutoff(model_cutoff), config).save(folder)
            trained = TrainedModel.load(folder, "cpu")
            differences |= {
                f"{k}={v}" for k, v in trained.config.to_json().items() if getattr(config, k) != v
            }
            for week in scored:
                for task, figures in model_alone(trained, frames, bought, tests[week]).items():
                    cells[task].append(figures)
        # the kept models may predate today's defaults
        print_row(
            f"{name} (as trained: {', '.join(sorted(differences))})" if differences else name, cells
        )


if __name__ == "__main__":
    main()

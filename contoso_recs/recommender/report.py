"""Evaluation results as JSON, a markdown report and a chart comparing every method."""

import argparse
import json
import logging
import sys
from pathlib import Path

from contoso_recs.recommender.metrics import INTERVAL_REFERENCE

log = logging.getLogger(__name__)

TASK_TITLES = {"A": "A: any product", "B": "B: products new to the customer"}
METRICS = ("hr@5", "ndcg@5", "map@5", "recall@10", "coverage@5", "already_bought@5")
CHART_METRICS = ("hr@5", "ndcg@5")
SHIPPED = "blend"


def write_report(results: dict, out_dir: Path) -> list[Path]:
    """evaluation.json, evaluation_details.json, evaluation.md and evaluation.png under
    `out_dir`.

    evaluation.json holds the figures alone, `{dataset: {cutoff: {task: {method: {metric:
    value}}}}}`; per-segment figures, intervals, blend weights and timings go to
    evaluation_details.json, keyed by dataset and cutoff the same way.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    figures, details = split_results(results)
    json_path = out_dir / "evaluation.json"
    json_path.write_text(json.dumps(figures, indent=2, sort_keys=False) + "\n")
    details_path = out_dir / "evaluation_details.json"
    details_path.write_text(json.dumps(details, indent=2, sort_keys=False) + "\n")
    chart_path = out_dir / "evaluation.png"
    write_chart(results, chart_path)
    md_path = out_dir / "evaluation.md"
    md_path.write_text(markdown(results, chart_path.name))
    log.info("evaluation report written to %s", out_dir)
    return [json_path, details_path, md_path, chart_path]


def split_results(results: dict) -> tuple[dict, dict]:
    """The task figures of every dataset and cutoff, and everything else beside them."""
    figures: dict = {}
    details: dict = {}
    for dataset, cutoffs in results.items():
        for cutoff, result in cutoffs.items():
            figures.setdefault(dataset, {})[cutoff] = {
                t: result[t] for t in TASK_TITLES if t in result
            }
            details.setdefault(dataset, {})[cutoff] = {
                key: value for key, value in result.items() if key not in TASK_TITLES
            }
    return figures, details


def markdown(results: dict, chart_name: str) -> str:
    """Tables of every metric per dataset, cutoff and task, with the chart on top."""
    lines = ["# Recommender evaluation", "", f"![HR@5 and NDCG@5 per method]({chart_name})", ""]
    lines += [
        "Temporal holdout: train on purchases before the cutoff, test on the 7 days from it, "
        "whole-catalogue ranking. Test customers: those with a purchase in the test week "
        "(task B: those with a product new to them; buy again has no task-B row, as it shows "
        "only bought products).",
        "",
        *_method_notes(),
        *(_complete_journey_weeks() if "completejourney" in results else []),
        "",
        "Real-time recommendations (the product page, one viewed product at a time) are "
        "evaluated in [evaluation_online.md](evaluation_online.md).",
        "",
    ]
    for dataset, cutoffs in results.items():
        for cutoff, result in cutoffs.items():
            lines += [f"## {dataset}, cutoff {cutoff}", ""]
            for task in TASK_TITLES:
                lines += _task_table(task, result.get(task, {}))
                lines += _interval_table(task, result.get("intervals", {}).get(task, {}))
                lines += _segment_table(result.get("segments", {}).get(task, {}))
            lines += [f"Blend configuration: `{json.dumps(result.get('blend_config', {}))}`", ""]
    return "\n".join(lines) + "\n"


def _method_notes() -> list[str]:
    """What `blend` and `tuned_blend` are, and how each metric and segment is defined."""
    from contoso_recs.recommender.data import HEAVY_MIN_ORDERS, HEAVY_WINDOW_DAYS
    from contoso_recs.recommender.evaluate import VALIDATION_WEEKS
    from contoso_recs.recommender.learned import RULE_WEEKS

    return [
        "- `blend`: what ships, on the same candidates as `tuned_blend`: task A ranked by the "
        f"learned rule (a LambdaRank model over the blend's signals) fit on the {RULE_WEEKS} "
        f"weeks before the cutoff (each block of {VALIDATION_WEEKS} weeks scored by a model "
        "trained before it), task B by the shipped weights with at most one product of a "
        "category, as the weekly top-5 table ranks. "
        "The model card and the promotion gate judge these rules too, but on the candidate's "
        "own holdout week, "
        "where task A's rule is cross-fitted (each half of the week's customers ranked by a "
        "rule fit on the other half and the earlier weeks), so their task-A figures can sit "
        "above what ships.",
        "- Task B's mailer term: the blends read the promotion plan of the test week itself "
        "(the share of stores whose weekly mailer features each product), the one input from "
        "the week being predicted: the plan is written before its week starts, as the weekly "
        "email is. Every other input is from before the cutoff; the baselines and `two_tower` "
        "do not read the plan.",
        "- `blend_without_mailer` and `popularity_mailer` (task B only): yardsticks for the "
        "mailer term, on the blend's candidates: what ships without it, and popularity with "
        "the mailer term alone at the shipped weights.",
        "- `tuned_blend`: a yardstick that never ships: the blend's weights tuned at each "
        f"cutoff on the {VALIDATION_WEEKS} weeks before it, scored by a model trained before "
        "them.",
        "- Metrics: HR@5 and NDCG@5 with binary relevance, NDCG's ideal over min(relevant, 5); "
        "MAP@5 divides by min(relevant, 5); Recall@10 is the share of a customer's relevant "
        "products in their top 10; coverage@5 is the share of the products on sale at the "
        "cutoff shown to at least one test customer; already_bought@5 is the share of all "
        "top-5 slots, over every test customer, holding a product the customer bought before "
        "the cutoff. A test customer without a list counts as a miss. Under each task's table: "
        "95% bootstrap intervals over its test customers.",
        "- Segments: new (no purchase before the cutoff), heavy (at least "
        f"{HEAVY_MIN_ORDERS} orders in the {HEAVY_WINDOW_DAYS} days before it), light "
        "(everyone else); n/a where a segment has no test customer.",
    ]


def _complete_journey_weeks() -> list[str]:
    """Which weeks of The Complete Journey chose the product's settings."""
    return [
        "- Which weeks chose what (The Complete Journey): the two-tower's training settings, "
        "the learned rule's and the task-B mailer weight were chosen on validation weeks from "
        "2017-10-02 to 2017-11-27; the other task-B weights, ALS and item-kNN on weeks up to "
        "2017-11-06. None was "
        "chosen on the week from 2017-12-04: it is free of tuning, though its figures have "
        "been reported after each change. Some validation weeks (from 2017-11-20) come after "
        "2017-11-13, so its figures of the methods ranking with the two-tower model "
        "or the mailer weight (`two_tower`, `blend`, `tuned_blend`, `blend_without_mailer`, "
        "`popularity_mailer`) may be optimistic: the second cutoff shows that "
        "nothing is tuned to one week, not a second holdout free of tuning.",
    ]


def write_chart(results: dict, path: Path) -> None:
    """Bars of HR@5 and NDCG@5 per method, one panel per task and metric, cutoffs side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(d, c, r) for d, cutoffs in results.items() for c, r in cutoffs.items()]
    figure, axes = plt.subplots(len(TASK_TITLES), len(CHART_METRICS), figsize=(12, 7))
    for row, task in enumerate(TASK_TITLES):
        for col, metric in enumerate(CHART_METRICS):
            axis = axes[row][col]
            methods = list(runs[0][2].get(task, {})) if runs else []
            width = 0.8 / max(len(runs), 1)
            for i, (dataset, cutoff, result) in enumerate(runs):
                values = [result.get(task, {}).get(m, {}).get(metric, 0.0) for m in methods]
                offsets = [x + i * width for x in range(len(methods))]
                axis.bar(offsets, values, width, label=f"{dataset} {cutoff}")
            axis.set_xticks([x + width * (len(runs) - 1) / 2 for x in range(len(methods))])
            axis.set_xticklabels(methods, rotation=20, fontsize=8)
            axis.set_title(f"{TASK_TITLES[task]} — {metric}", fontsize=9)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _task_table(task: str, methods: dict) -> list[str]:
    header = "| method | " + " | ".join(METRICS) + " | customers |"
    rule = "|---" * (len(METRICS) + 2) + "|"
    rows = [
        f"| {method} | "
        + " | ".join(f"{values.get(m, 0.0):.4f}" for m in METRICS)
        + f" | {int(values.get('customers', 0))} |"
        for method, values in methods.items()
    ]
    return [f"### Task {TASK_TITLES[task]}", "", header, rule, *rows, ""]


def _interval_table(task: str, methods: dict) -> list[str]:
    """95% bootstrap intervals of HR@5 and NDCG@5, and of each method's paired difference
    from the task's reference method."""
    if not methods:
        return []
    reference = INTERVAL_REFERENCE[task]
    columns = [c for m in ("hr@5", "ndcg@5") for c in (m, f"{m} - {reference}")]
    header = "| method | " + " | ".join(columns) + " |"
    rule = "|---" * (len(columns) + 1) + "|"
    rows = [
        f"| {method} | " + " | ".join(_interval_cell(values, c) for c in columns) + " |"
        for method, values in methods.items()
    ]
    note = (
        "95% intervals (bootstrap over the test customers; a difference is paired, customer by "
        f"customer, with `{reference}`: an interval that holds 0 is no measured difference):"
    )
    return [note, "", header, rule, *rows, "", *_verdict(methods.get(SHIPPED, {}), reference)]


def _verdict(values: dict, reference: str) -> list[str]:
    """One line saying whether what ships measurably beats the task's reference method."""
    said = []
    for metric in ("hr@5", "ndcg@5"):
        if (column := f"{metric} - {reference}") not in values:
            return []
        low, high = values[column]
        if low > 0:
            said.append(f"{metric.upper()} measurably above")
        elif high < 0:
            said.append(f"{metric.upper()} measurably below")
        else:
            said.append(f"{metric.upper()} no measured difference")
    return [f"What ships (`{SHIPPED}`) against `{reference}`: " + "; ".join(said) + ".", ""]


def _interval_cell(values: dict, column: str) -> str:
    if column not in values:
        return "—"
    low, high = values[column]
    return f"[{low:+.4f}, {high:+.4f}]" if " - " in column else f"[{low:.4f}, {high:.4f}]"


def _segment_table(methods: dict) -> list[str]:
    segments = ["new", "light", "heavy"]
    header = "| method | " + " | ".join(f"{s} HR@5 / NDCG@5 (n)" for s in segments) + " |"
    rule = "|---" * (len(segments) + 1) + "|"
    rows = []
    for method, by_segment in methods.items():
        cells = []
        for segment in segments:
            values = by_segment.get(segment) or {}
            customers = int(values.get("customers", 0))
            if not customers:
                cells.append("n/a (0)")
                continue
            cells.append(
                f"{values.get('hr@5', 0.0):.3f} / {values.get('ndcg@5', 0.0):.3f} ({customers})"
            )
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return ["Per segment:", "", header, rule, *rows, ""]


def rerender(out_dir: Path) -> Path:
    """evaluation.md and evaluation.png again from the evaluation.json and
    evaluation_details.json under `out_dir` (after a change to the report's wording, without
    evaluating again)."""
    figures = json.loads((out_dir / "evaluation.json").read_text())
    details = json.loads((out_dir / "evaluation_details.json").read_text())
    results = {
        dataset: {
            cutoff: {**figures[dataset][cutoff], **details.get(dataset, {}).get(cutoff, {})}
            for cutoff in cutoffs
        }
        for dataset, cutoffs in figures.items()
    }
    if any(
        "shipped_blend" in result.get(task, {})
        for c in results.values()
        for result in c.values()
        for task in TASK_TITLES
    ):
        raise ValueError(
            f"{out_dir / 'evaluation.json'} was written before `blend` named what ships (it "
            "has `shipped_blend`): run the evaluation again instead"
        )
    write_chart(results, out_dir / "evaluation.png")
    md_path = out_dir / "evaluation.md"
    md_path.write_text(markdown(results, "evaluation.png"))
    return md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=rerender.__doc__)
    parser.add_argument("out", nargs="?", default="reports", type=Path)
    args = parser.parse_args(argv)
    sys.stdout.write(f"{rerender(args.out)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Candidate training through Pipes, evaluation against baselines, the gate and promotion."""

import base64
import json
import sys
import warnings
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import polars as pl
from pydantic import Field

from contoso_recs.lake import keys
from contoso_recs.resources.lake import Lake
from contoso_recs.resources.model_store import ModelStore

if TYPE_CHECKING:  # imported where used: the recommender is heavy to load
    from contoso_recs.recommender.evaluate import LakeWeek

MODEL_GROUP = "model"
CANDIDATE = dg.AssetKey(["model", "two_tower_candidate"])
EVALUATION = dg.AssetKey(["model", "evaluation"])
PROMOTED = dg.AssetKey(["model", "promoted_model"])
# What the candidate is trained and judged on (the promotion plan: the blend's mailer term).
TRAINING_TABLES = [
    keys.PRODUCTS,
    keys.ORDERS,
    keys.ORDER_LINES,
    keys.PROMOTIONS,
    keys.CUSTOMERS,
    keys.PRODUCT_VIEWS,
    keys.PRODUCT_IMAGE_FEATURES,
]
HOLDOUT_DAYS = 7


class CandidateConfig(dg.Config):
    """How the candidate is trained: on everything before the cutoff."""

    cutoff: str | None = None
    """YYYY-MM-DD; by default the last 7 days of orders are held out for the evaluation."""
    # TwoTowerConfig.epochs, kept here as a number so the code location loads without torch
    epochs: int = Field(default=8, ge=1)
    seed: int = 7
    threads: int | None = Field(default=None, ge=1)


def default_cutoff(lake: Lake) -> date:
    """The start of the holdout: 7 days before the day after the latest order."""
    latest = lake.scan("orders").select(pl.col("ordered_at").max()).collect().item()
    if latest is None:
        raise ValueError("the lake has no orders yet: materialise lake/orders first")
    return latest.date() + timedelta(days=1) - timedelta(days=HOLDOUT_DAYS)


def lake_versions(lake: Lake) -> dict[str, int]:
    """The Delta version of every table the model reads, so the run can be reproduced."""
    versions = {}
    for key in TRAINING_TABLES:
        table = keys.table_name(key)
        version = lake.version(table)
        if version is not None:
            versions[table] = version
    return versions


@dg.asset(
    key=CANDIDATE,
    deps=TRAINING_TABLES,
    group_name=MODEL_GROUP,
    kinds={"pytorch"},
    pool="training",
)
def two_tower_candidate(
    context: dg.AssetExecutionContext,
    config: CandidateConfig,
    lake: Lake,
    model_store: ModelStore,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """A newly trained two-tower model, kept as a version with the lake versions it read."""
    cutoff = date.fromisoformat(config.cutoff) if config.cutoff else default_cutoff(lake)
    versions = lake_versions(lake)
    version = f"{cutoff:%Y%m%d}-{context.run_id[:8]}"
    bundle = model_store.version_dir(version)
    command = [
        sys.executable,
        "-m",
        "contoso_recs.recommender.entrypoint",
        "--lake",
        lake.root_uri,
        "--cutoff",
        cutoff.isoformat(),
        "--out",
        str(bundle),
        "--epochs",
        str(config.epochs),
        "--seed",
        str(config.seed),
        "--versions",
        json.dumps(versions),
    ]
    if config.threads:
        command += ["--threads", str(config.threads)]
    context.log.info(f"training model {version} on orders before {cutoff}, lake {versions}")

    with warnings.catch_warnings():
        # Dagster's own Pipes reader calls a preview API of itself; nothing to act on here
        warnings.filterwarnings(
            "ignore", message=".*expected_writer_count", category=dg.PreviewWarning
        )
        invocation = pipes_subprocess_client.run(command=command, context=context)
    result = invocation.get_materialize_result()
    reported = {name: value.value for name, value in result.metadata.items()}
    model_store.write_card(
        version,
        {
            "version": version,
            "cutoff": cutoff.isoformat(),
            "lake_versions": versions,
            "training": reported,
            "parameters": json.loads((bundle / "config.json").read_text()),
            "run_id": context.run_id,
            "trained_at": datetime.now(UTC).isoformat(),
        },
    )
    try:
        removed = model_store.remove_old_versions(protect={version})
    except (OSError, ValueError) as error:  # the new model stands; old ones wait for the next
        context.log.warning(f"old model versions not removed: {error}")
        removed = []
    if removed:
        context.log.info(
            f"removed {len(removed)} model versions trained on cutoffs older than the "
            f"{model_store.keep_cutoffs} newest: {', '.join(removed)}"
        )
    return dg.MaterializeResult(
        metadata={
            **result.metadata,
            "model_version": dg.MetadataValue.text(version),
            "cutoff": dg.MetadataValue.text(cutoff.isoformat()),
            "lake_versions": dg.MetadataValue.json(versions),
            "versions_removed": dg.MetadataValue.json(removed),
        }
    )


def candidate_version(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> str:
    """The candidate trained in this run (or in the run it re-executes); in a run that trained
    none, the latest one trained.

    Looking in the run first keeps two overlapping runs from evaluating, gating or promoting
    each other's candidate.
    """
    run = context.run
    for run_id in dict.fromkeys(r for r in (run.run_id, run.parent_run_id, run.root_run_id) if r):
        records = context.instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, ascending=False
        ).records
        for record in records:
            materialization = record.event_log_entry.asset_materialization
            if materialization is not None and materialization.asset_key == CANDIDATE:
                return str(materialization.metadata["model_version"].value)
    event = context.instance.get_latest_materialization_event(CANDIDATE)
    if event is None or event.asset_materialization is None:
        raise ValueError("no candidate model has been trained yet")
    return str(event.asset_materialization.metadata["model_version"].value)


@dg.asset(key=EVALUATION, deps=[CANDIDATE], group_name=MODEL_GROUP, kinds={"pytorch"})
def evaluation(
    context: dg.AssetExecutionContext, lake: Lake, model_store: ModelStore
) -> dg.MaterializeResult:
    """How the candidate ranks next week's purchases beside popularity, buy again, kNN and ALS."""
    from contoso_recs.recommender.evaluate import evaluate_bundle, lake_week
    from contoso_recs.recommender.report import write_chart

    version = candidate_version(context)
    card = model_store.card(version)
    cutoff = date.fromisoformat(card["cutoff"])
    # read once for the candidate and the promoted model, with one ALS fit
    week = lake_week(lake.root_uri, cutoff, card["lake_versions"])
    results = evaluate_bundle(
        lake.root_uri,
        model_store.version_dir(version),
        cutoff,
        card["lake_versions"],
        earlier=other_versions(model_store, version),
        week=week,
    )
    chart = model_store.version_dir(version) / "evaluation.png"
    write_chart({"lake": {card["cutoff"]: results}}, chart)
    (model_store.version_dir(version) / "evaluation.json").write_text(json.dumps(results, indent=2))
    promoted = promoted_on_same_week(context, lake, model_store, version, card, week)
    # new figures void any earlier gate verdict: only the check run on them may allow promotion
    model_store.update_card(
        version,
        evaluation={t: results[t] for t in ("A", "B")},
        promoted_same_week=promoted,
        gate=None,
    )

    metrics = {
        f"{task}/{method}/{metric}": dg.MetadataValue.float(float(value))
        for task in ("A", "B")
        for method, figures in results[task].items()
        for metric, value in figures.items()
    }
    learned_on = int(results.get("learned_rule_customers", 0))
    learned_weeks = results.get("learned_rule_weeks", [])
    context.log.info(
        f"model {version}: blend task A hr@5 {results['A']['blend']['hr@5']:.3f}, "
        f"task B hr@5 {results['B']['blend']['hr@5']:.3f}; task A ranked by "
        + (
            f"a rule learned on {learned_on} customers of {len(learned_weeks)} weeks from "
            f"{learned_weeks[0] if learned_weeks else ''} (figures cross-fitted: each customer "
            "ranked by a rule that never saw their purchases)"
            if learned_on
            else "the shipped weights (too few customers in the holdout week and the earlier "
            "weeks kept to learn a rule)"
        )
    )
    comparison = (
        {
            f"promoted/{task}/{metric}": dg.MetadataValue.float(float(value))
            for task, figures in promoted["blend"].items()
            for metric, value in figures.items()
        }
        if promoted
        else {}
    )
    return dg.MaterializeResult(
        metadata={
            **comparison,
            "promoted_version": dg.MetadataValue.text(promoted["version"] if promoted else ""),
            "model_version": dg.MetadataValue.text(version),
            "test_customers": dg.MetadataValue.int(int(results.get("test_customers", 0))),
            "learned_rule_customers": dg.MetadataValue.int(learned_on),
            "learned_rule_weeks": dg.MetadataValue.text(", ".join(learned_weeks)),
            "report": dg.MetadataValue.md(evaluation_markdown(results, chart)),
            **metrics,
        }
    )


def other_versions(model_store: ModelStore, version: str) -> list[Path]:
    """The folders of the store's other model versions, where earlier retrains kept the
    weeks the learned blend rule learns from."""
    return [model_store.version_dir(v) for v in model_store.versions() if v != version]


def promoted_on_same_week(
    context: dg.AssetExecutionContext,
    lake: Lake,
    model_store: ModelStore,
    candidate: str,
    card: dict,
    week: "LakeWeek | None" = None,
) -> dict | None:
    """The promoted model's blend figures on the candidate's own holdout week, so the gate
    compares like with like (a week's figures move by more than the gate's tolerance).

    None when nothing is promoted yet, or when the promoted model was trained past the
    candidate's cutoff (it would have seen the holdout week); the gate then falls back to the
    figures recorded when that model was promoted.
    """
    from contoso_recs.recommender.evaluate import evaluate_blends

    current = model_store.current_version()
    if current is None or current == candidate:
        return None
    promoted_cutoff = model_store.card(current)["cutoff"]
    if promoted_cutoff > card["cutoff"]:
        context.log.warning(
            f"the promoted model {current} was trained on orders up to {promoted_cutoff}, past "
            f"this candidate's cutoff {card['cutoff']}: the gate uses its recorded figures"
        )
        return None
    figures = evaluate_blends(
        lake.root_uri,
        model_store.version_dir(current),
        date.fromisoformat(card["cutoff"]),
        card["lake_versions"],
        earlier=other_versions(model_store, candidate),
        week=week,
    )
    context.log.info(
        f"promoted model {current} on the same week: task A hr@5 {figures['A']['hr@5']:.3f}, "
        f"task B hr@5 {figures['B']['hr@5']:.3f}"
    )
    return {"version": current, "blend": figures}


def evaluation_markdown(results: dict, chart: Path) -> str:
    from contoso_recs.recommender.metrics import INTERVAL_REFERENCE

    lines = []
    for task in ("A", "B"):
        intervals = results.get("intervals", {}).get(task, {})
        reference = INTERVAL_REFERENCE[task]
        lines += [
            f"**Task {task}**",
            "",
            f"| method | hr@5 | ndcg@5 | coverage@5 | hr@5 - {reference}, 95% interval |",
            "|---|---|---|---|---|",
        ]
        for method, figures in results[task].items():
            low, high = intervals.get(method, {}).get(f"hr@5 - {reference}", (None, None))
            difference = "—" if low is None else f"[{low:+.3f}, {high:+.3f}]"
            lines.append(
                f"| {method} | {figures['hr@5']:.3f} | {figures['ndcg@5']:.3f} | "
                f"{figures['coverage@5']:.4f} | {difference} |"
            )
        lines.append("")
    picture = base64.b64encode(chart.read_bytes()).decode()
    lines.append(f"![evaluation](data:image/png;base64,{picture})")
    return "\n".join(lines)

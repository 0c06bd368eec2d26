"""The weekly flow on a real ephemeral Dagster instance: schedule, retraining, sensor, table."""

import json
from datetime import UTC, date, datetime

import dagster as dg
import polars as pl
import pytest
from dagster._core.test_utils import create_run_for_test, freeze_time

from contoso_recs.automation.weekly import (
    RETRAIN_RUN_TAG,
    WEEK_TAG,
    weekly_email_job,
    weekly_email_sensor,
    weekly_retrain_job,
    weekly_schedule,
)
from contoso_recs.definitions import build_definitions
from contoso_recs.environment import local_resources
from contoso_recs.lake import keys
from contoso_recs.main_job import demo
from contoso_recs.model import gate
from contoso_recs.model.assets import CANDIDATE, EVALUATION, PROMOTED
from contoso_recs.recommender import evaluate, learned
from contoso_recs.weekly_email.assets import TABLE, WEEKLY_TOP5, freshness_checks, table_checks
from contoso_recs_tests.conftest import materialization
from contoso_recs_tests.test_model_stage import far_better_blend

MONDAY_3AM = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
WEEK = "2026-11-30"  # the tiny demo's orders end on Sunday 2026-11-29


@pytest.fixture(scope="module")
def tiny_lake(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("weekly")
    assert demo(data_dir, "synthetic", "tiny", 0, lambda _: None, train_model=False)
    return data_dir


def definitions_for(data_dir) -> dg.Definitions:
    return build_definitions(local_resources(data_dir))


def run_request(result) -> dg.RunRequest:
    requests = list(result) if not isinstance(result, dg.RunRequest) else [result]
    assert len(requests) == 1
    return requests[0]


def retrain(definitions, instance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    config = request.run_config
    config["ops"]["model__two_tower_candidate"]["config"].update({"epochs": 1, "threads": 1})
    return definitions.resolve_job_def(weekly_retrain_job.name).execute_in_process(
        instance=instance, run_config=config, tags=request.tags, raise_on_error=False
    )


def sensor_requests(definitions, instance, cursor=None) -> tuple[list[dg.RunRequest], str]:
    context = dg.build_sensor_context(instance=instance, definitions=definitions, cursor=cursor)
    requests = list(weekly_email_sensor(context) or [])
    return requests, context.cursor


def write_week(definitions, instance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    return definitions.resolve_job_def(weekly_email_job.name).execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        tags=request.tags,
        raise_on_error=False,
    )


def checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def week_rows(data_dir) -> pl.DataFrame:
    lake = local_resources(data_dir)["lake"]
    return lake.read(TABLE).filter(pl.col("week") == datetime.fromisoformat(WEEK).date())


def test_the_jobs_cover_refresh_and_model_then_the_weekly_table(tiny_lake):
    graph = definitions_for(tiny_lake).resolve_asset_graph()

    retrained = weekly_retrain_job.selection.resolve(graph)
    assert {CANDIDATE, EVALUATION, PROMOTED, keys.ORDERS, keys.CUSTOMERS} <= retrained
    assert WEEKLY_TOP5 not in retrained
    assert weekly_email_job.selection.resolve(graph) == {WEEKLY_TOP5}


def test_monday_schedule_retrains_on_data_before_the_week_and_tags_the_week(instance):
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=MONDAY_3AM)

    request = run_request(weekly_schedule(context))

    assert request.tags[WEEK_TAG] == WEEK
    assert request.run_key == WEEK
    candidate = request.run_config["ops"]["model__two_tower_candidate"]["config"]
    assert candidate["cutoff"] == "2026-11-23"


def test_the_week_is_written_after_retraining_and_again_with_the_old_model_if_the_gate_fails(
    tiny_lake, instance, monkeypatch
):
    definitions = definitions_for(tiny_lake)
    store = local_resources(tiny_lake)["model_store"]
    schedule_context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=MONDAY_3AM
    )
    # Before any model is promoted the week is still written, from the blend's other signals.
    unranked = write_week(definitions, instance, dg.RunRequest(partition_key=WEEK))
    assert unranked.success
    assert all(checks(unranked).values())
    metadata = materialization(unranked, "lake", "weekly_top5")
    assert metadata["model_version"] == "none"
    assert "no model has been promoted before" in metadata["promotion"]

    assert metadata["blend"]["ranked_by"] == "weights"
    plan = local_resources(tiny_lake)["lake"].read("promotions")
    featured = plan.filter(
        (pl.col("week_start") == date.fromisoformat(WEEK)) & (pl.col("mailer_share") > 0)
    )
    assert metadata["mailer_products"] == featured.height > 0

    # On 200 customers the gate's outcome is noise: let this first candidate through, with a
    # learned rule (fewer customers buy in its holdout week than a rule needs by default).
    with monkeypatch.context() as patched:
        patched.setattr(gate, "gate_failures", lambda candidate, promoted: [])
        patched.setattr(learned, "MIN_CUSTOMERS", 5)
        retrained = retrain(definitions, instance, run_request(weekly_schedule(schedule_context)))
    assert retrained.success
    promoted = store.current_version()
    assert promoted == materialization(retrained, "model", "two_tower_candidate")["model_version"]

    requests, cursor = sensor_requests(definitions, instance)
    assert [(r.partition_key, r.tags[RETRAIN_RUN_TAG]) for r in requests] == [
        (WEEK, retrained.run_id)
    ]
    assert sensor_requests(definitions, instance, cursor)[0] == []
    ranked_by_rule = []
    rule_scores = learned.LearnedRule.scores
    monkeypatch.setattr(
        learned.LearnedRule,
        "scores",
        lambda rule, pool: ranked_by_rule.append(len(pool.customer_ids)) or rule_scores(rule, pool),
    )
    written = write_week(definitions, instance, requests[0])
    assert written.success
    assert checks(written) == {
        "five_per_customer": True,
        "no_duplicate_products": True,
        "products_on_sale": True,
    }
    metadata = materialization(written, "lake", "weekly_top5")
    assert metadata["model_version"] == promoted
    assert metadata["blend"]["ranked_by"] == "learned rule"
    assert sum(ranked_by_rule) == metadata["customers"]
    assert metadata["customers"] * 5 == metadata["dagster/partition_row_count"]
    first = week_rows(tiny_lake)
    assert first["model_version"].unique().to_list() == [promoted]

    # The same week again, reproduced exactly, replacing the partition rather than adding to it.
    assert write_week(definitions, instance, requests[0]).success
    assert (
        week_rows(tiny_lake).sort("customer_id", "rank").equals(first.sort("customer_id", "rank"))
    )

    # A damaged rule file: the week is still written, ranked by the weights, and the log says so.
    rule_file = store.version_dir(promoted) / learned.FILE
    rule_file.write_text(rule_file.read_text()[:1000])
    damaged = write_week(definitions, instance, requests[0])
    assert damaged.success
    assert materialization(damaged, "lake", "weekly_top5")["blend"]["ranked_by"] == "weights"
    messages = [entry.user_message for entry in instance.all_logs(damaged.run_id)]
    assert any("is not a readable blend rule" in message for message in messages)

    # A bar no candidate can clear: the next retraining fails the gate, the week is still written.
    monkeypatch.setattr(evaluate, "evaluate_blends", far_better_blend)
    failed = retrain(definitions, instance, run_request(weekly_schedule(schedule_context)))
    assert not failed.success
    assert store.current_version() == promoted

    requests, _ = sensor_requests(definitions, instance, cursor)
    assert [(r.partition_key, r.tags[RETRAIN_RUN_TAG]) for r in requests] == [(WEEK, failed.run_id)]
    rewritten = write_week(definitions, instance, requests[0])
    assert rewritten.success
    metadata = materialization(rewritten, "lake", "weekly_top5")
    assert metadata["model_version"] == promoted
    assert "was not promoted" in metadata["promotion"]
    assert "below the promoted model's 2.0000" in metadata["promotion"]


def test_the_freshness_check_wants_this_weeks_partition_after_monday_9am(tiny_lake, instance):
    definitions = dg.Definitions.merge(
        definitions_for(tiny_lake),
        dg.Definitions(
            jobs=[
                dg.define_asset_job(
                    "freshness", selection=dg.AssetSelection.checks(*freshness_checks)
                )
            ]
        ),
    )
    freshness = definitions.resolve_job_def("freshness")
    friday = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)

    with freeze_time(friday):
        before = freshness.execute_in_process(instance=instance, raise_on_error=False)
    assert list(checks(before).values()) == [False]

    instance.report_runless_asset_event(dg.AssetMaterialization(WEEKLY_TOP5, partition=WEEK))
    with freeze_time(friday):
        after = freshness.execute_in_process(instance=instance, raise_on_error=False)
    assert list(checks(after).values()) == [True]


def test_a_backtest_week_must_be_a_monday(tmp_path):
    said = []

    assert not demo(tmp_path, "synthetic", "tiny", 0, said.append, week=date(2026, 11, 24))
    assert said == ["2026-11-24 is a Tuesday: a week starts on a Monday"]
    assert not (tmp_path / "sources").exists()


def test_a_backtest_week_outside_the_data_is_refused_before_the_lake_is_touched(tmp_path):
    said = []

    assert not demo(
        tmp_path, "synthetic", "tiny", 0, said.append, week=date(2030, 1, 7), backtest=True
    )
    assert said[-1] == (
        "the synthetic orders run from 2026-09-01 to 2026-11-30: a backtest needs 28 days of "
        "orders before the week to train on and a week the data reaches, so pick a Monday from "
        "2026-10-05 to 2026-11-23"
    )
    assert not (tmp_path / "lake").exists()
    assert not demo(
        tmp_path, "synthetic", "tiny", 0, said.append, week=date(2026, 9, 28), backtest=True
    )
    assert said[-1].endswith("pick a Monday from 2026-10-05 to 2026-11-23")


def test_a_backtest_leaves_the_live_instance_model_and_serving_bundle_alone(tmp_path):
    """The live promoted model and serving bundle are stand-in pointer files: the backtest must
    neither move them nor record runs in the live instance; its table lands in the lake."""
    live_model = tmp_path / "models" / "current.json"
    live_bundle = tmp_path / "serving" / "current.json"
    for pointer in (live_model, live_bundle):
        pointer.parent.mkdir(parents=True)
        pointer.write_text('{"model_version": "live"}')
    said = []

    assert demo(
        tmp_path, "synthetic", "tiny", 0, said.append, week=date(2026, 11, 23), backtest=True
    )

    assert live_model.read_text() == live_bundle.read_text() == '{"model_version": "live"}'
    apart = tmp_path / "backtests" / "2026-11-23"
    promoted = json.loads((apart / "models" / "current.json").read_text())["version"]
    assert json.loads((apart / "serving" / "current.json").read_text())["model_version"] == (
        promoted
    )
    assert not (tmp_path / "dagster_home").exists()  # no run recorded in the live instance
    table = pl.read_delta(str(tmp_path / "lake" / "weekly_top5"))
    assert table["week"].unique().to_list() == [date(2026, 11, 23)]
    assert set(table["model_version"]) == {promoted}
    assert f"Open the UI on it with `make ui DAGSTER_HOME={apart / 'dagster_home'}`" in said[-1]


def test_a_cancelled_retraining_still_gets_the_weeks_table(instance):
    run = create_run_for_test(
        instance,
        job_name=weekly_retrain_job.name,
        status=dg.DagsterRunStatus.STARTED,
        tags={WEEK_TAG: WEEK},
    )
    instance.report_run_canceled(run)  # what Terminate in the UI does

    context = dg.build_sensor_context(instance=instance)
    requests = list(weekly_email_sensor(context) or [])

    assert [(r.partition_key, r.tags[RETRAIN_RUN_TAG]) for r in requests] == [(WEEK, run.run_id)]


def test_a_row_without_a_product_fails_the_products_on_sale_check():
    written = pl.DataFrame(
        {"customer_id": [10] * 5, "product_id": [1, 2, 3, 4, None]},
        schema={"customer_id": pl.Int64, "product_id": pl.Int64},
    )
    results = {r.check_name: r for r in table_checks(written, [10], pl.Series([1, 2, 3, 4, 5]))}

    assert not results["products_on_sale"].passed
    assert results["products_on_sale"].metadata["rows_off_sale"].value == 1

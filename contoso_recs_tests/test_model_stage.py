"""The model stage: training through Pipes, evaluation, the blocking promotion gate."""

import shutil
from datetime import date, timedelta

import dagster as dg
import pytest

from contoso_recs.automation.jobs import train_and_promote_job
from contoso_recs.definitions import build_definitions
from contoso_recs.environment import local_resources
from contoso_recs.main_job import demo
from contoso_recs.model import assets, gate
from contoso_recs.model.gate import gate_failures, not_promotable, promoted_figures
from contoso_recs.recommender import baselines, blend, evaluate, learned
from contoso_recs.recommender.blend import SHIPPED_BLENDS
from contoso_recs.recommender.data import as_cutoff, purchases, read_lake
from contoso_recs.recommender.metrics import evaluate_task
from contoso_recs.recommender.train import TrainedModel
from contoso_recs.recommender.two_tower import TwoTowerConfig
from contoso_recs_tests.conftest import materialization


def evaluation(blend_a: float, popularity_a: float, blend_b: float, popularity_b: float) -> dict:
    def figures(value: float) -> dict:
        return {"hr@5": value, "ndcg@5": value / 2}

    return {
        "A": {"blend": figures(blend_a), "popularity": figures(popularity_a)},
        "B": {"blend": figures(blend_b), "popularity": figures(popularity_b)},
    }


def test_a_candidate_that_beats_popularity_on_both_tasks_passes_the_gate():
    assert gate_failures(evaluation(0.7, 0.4, 0.10, 0.07), promoted=None) == []


def test_a_candidate_no_better_than_popularity_on_task_b_fails_the_gate():
    failures = gate_failures(evaluation(0.7, 0.4, 0.07, 0.07), promoted=None)

    assert failures == [
        "task B hr@5 0.0700 does not beat popularity 0.0700",
        "task B ndcg@5 0.0350 does not beat popularity 0.0350",
    ]


def test_a_candidate_may_fall_below_the_promoted_model_by_the_tolerance_and_no_more():
    promoted = evaluation(0.70, 0.4, 0.10, 0.07)

    assert gate_failures(evaluation(0.68, 0.4, 0.096, 0.07), promoted, tolerance=0.05) == []
    failures = gate_failures(evaluation(0.66, 0.4, 0.10, 0.07), promoted, tolerance=0.05)
    assert failures == [
        "task A hr@5 0.6600 is more than 5% below the promoted model's 0.7000",
        "task A ndcg@5 0.3300 is more than 5% below the promoted model's 0.3500",
    ]


def test_the_tolerance_is_a_share_of_each_figure_so_it_guards_the_small_task_b_figures_too():
    """Task B's figures are a tenth of task A's: a drop of .009 is within 5% of task A's .70
    but loses 9% of task B's hits."""
    promoted = evaluation(0.70, 0.4, 0.10, 0.07)

    failures = gate_failures(evaluation(0.691, 0.4, 0.091, 0.07), promoted, tolerance=0.05)

    assert failures == [
        "task B hr@5 0.0910 is more than 5% below the promoted model's 0.1000",
        "task B ndcg@5 0.0455 is more than 5% below the promoted model's 0.0500",
    ]


def far_better_blend(*args, **kwargs) -> dict:
    """The promoted model's figures on a holdout week, as if it were far better than anything."""
    return {task: {"hr@5": 2.0, "ndcg@5": 2.0} for task in ("A", "B")}


def test_the_gate_holds_a_candidate_against_the_promoted_model_on_the_same_week(tmp_path):
    store = local_resources(tmp_path)["model_store"]
    store.write_card("old", {"cutoff": "2026-11-09", "evaluation": evaluation(0.9, 0.4, 0.2, 0.07)})
    same_week = {"version": "old", "blend": {"A": {"hr@5": 0.6}, "B": {"hr@5": 0.09}}}
    card = {"cutoff": "2026-11-16", "promoted_same_week": same_week}

    figures, basis = promoted_figures(store, card, "old")
    assert figures == {"A": {"blend": {"hr@5": 0.6}}, "B": {"blend": {"hr@5": 0.09}}}
    assert basis == "old on the candidate's holdout week (2026-11-16)"

    recorded, basis = promoted_figures(store, {"cutoff": "2026-11-16"}, "old")
    assert recorded == evaluation(0.9, 0.4, 0.2, 0.07)
    assert basis == "old as recorded at its promotion"
    assert promoted_figures(store, card, None) == (None, "no model promoted yet")


@pytest.fixture(scope="module")
def tiny_lake(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tiny")
    assert demo(data_dir, "synthetic", "tiny", 0, lambda _: None, train_model=False)
    return data_dir


def train_and_promote(data_dir, instance, **candidate_config) -> dg.ExecuteInProcessResult:
    definitions = build_definitions(local_resources(data_dir))
    config = {"epochs": 1, "threads": 1, **candidate_config}
    return definitions.resolve_job_def(train_and_promote_job.name).execute_in_process(
        instance=instance,
        run_config={"ops": {"model__two_tower_candidate": {"config": config}}},
        raise_on_error=False,
    )


def test_training_runs_through_pipes_and_reports_each_epoch_and_the_lake_versions(
    tiny_lake, instance
):
    result = train_and_promote(tiny_lake, instance, epochs=2)

    assert result.is_node_success("model__two_tower_candidate")  # whatever the gate then says
    candidate = materialization(result, "model", "two_tower_candidate")
    assert candidate["epochs"] == 2
    assert len(candidate["loss_by_epoch"]) == 2
    assert candidate["examples_per_second"] > 0
    assert candidate["lake_versions"]["order_lines"] == 1  # created empty at 0, loaded at 1
    store = local_resources(tiny_lake)["model_store"]
    card = store.card(candidate["model_version"])
    assert card["lake_versions"] == candidate["lake_versions"]
    assert card["cutoff"] == candidate["cutoff"]
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("epoch 2: loss" in message for message in messages)


def test_a_candidate_through_the_gate_becomes_the_promoted_model(tiny_lake, instance, monkeypatch):
    # On 200 customers the gate's outcome is noise: the check is made to pass here, and to
    # fail in the tests below; gate_failures itself is tested on constructed figures above.
    monkeypatch.setattr(gate, "gate_failures", lambda candidate, promoted: [])

    result = train_and_promote(tiny_lake, instance)

    version = materialization(result, "model", "two_tower_candidate")["model_version"]
    report = materialization(result, "model", "evaluation")["report"]
    assert "| method | hr@5 | ndcg@5 | coverage@5 | hr@5 - buy_again, 95% interval |" in report
    assert "| method | hr@5 | ndcg@5 | coverage@5 | hr@5 - popularity, 95% interval |" in report
    checks = [e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate"]
    assert checks[0].passed
    store = local_resources(tiny_lake)["model_store"]
    assert store.current_version() == version
    assert materialization(result, "model", "promoted_model")["model_version"] == version
    assert store.card(version)["gate"]["passed"] is True


def test_a_training_run_removes_the_models_of_cutoffs_older_than_those_kept(tiny_lake, instance):
    store = local_resources(tiny_lake)["model_store"]
    earlier = store.versions()  # models of this lake trained by earlier tests
    cutoffs = [date(2020, 1, 6) + timedelta(days=7 * week) for week in range(13)]
    old = [f"{cutoff:%Y%m%d}-old" for cutoff in cutoffs]  # more than it keeps, all older
    for version, cutoff in zip(old, cutoffs, strict=True):
        store.write_card(version, {"cutoff": cutoff.isoformat()})
    assert len(old) == store.keep_cutoffs + 1

    try:
        result = train_and_promote(tiny_lake, instance)

        version = materialization(result, "model", "two_tower_candidate")["model_version"]
        removed = materialization(result, "model", "two_tower_candidate")["versions_removed"]
        newer = {store.card(v)["cutoff"] for v in store.versions() if v not in old}
        kept_old = old[len(old) - (store.keep_cutoffs - len(newer)) :]
        assert set(old) - set(kept_old) <= set(removed) <= set(old) | set(earlier)
        promoted = {store.current_version()} - {None}
        assert {version, *promoted, *kept_old} <= set(store.versions())
        assert not (tiny_lake / "models" / old[0]).exists()
    finally:  # the module's later tests see the store as before, with the new model
        for version in old:
            shutil.rmtree(store.version_dir(version), ignore_errors=True)


def test_the_promoted_model_is_judged_on_the_candidates_week_without_reading_it_again(
    tiny_lake, instance, monkeypatch
):
    monkeypatch.setattr(gate, "gate_failures", lambda candidate, promoted: [])
    reads, fits = [], []
    read, fit = evaluate.read_lake, baselines.fit_als
    monkeypatch.setattr(evaluate, "read_lake", lambda *a, **k: reads.append(1) or read(*a, **k))
    monkeypatch.setattr(baselines, "fit_als", lambda *a, **k: fits.append(1) or fit(*a, **k))
    first = train_and_promote(tiny_lake, instance)
    alone = (len(reads), len(fits))
    assert first.success and alone[0] == 1 and alone[1] >= 1

    second = train_and_promote(tiny_lake, instance)

    evaluated = materialization(second, "model", "evaluation")
    assert (
        evaluated["promoted_version"]
        == materialization(first, "model", "promoted_model")["model_version"]
    )  # the first model was judged on the second's week
    assert (len(reads) - alone[0], len(fits) - alone[1]) == alone


def test_a_gate_verdict_is_what_allows_promotion():
    passed = {"passed": True, "failures": [], "promoted_version": "v1"}
    failed = {"passed": False, "failures": ["task B hr@5 too low"], "promoted_version": "v1"}

    assert not_promotable({"version": "v2", "gate": passed}, "v1") is None
    assert not_promotable({"version": "v2"}, "v1") == "the promotion gate has not checked it"
    assert not_promotable({"version": "v2", "gate": failed}, "v1") == (
        "it failed the promotion gate (task B hr@5 too low)"
    )
    assert not_promotable({"version": "v2", "gate": passed}, "v3") == (
        "the gate held it against v1, but v3 is promoted now"
    )
    assert not_promotable({"version": "v1"}, "v1") is None


def test_promoting_a_candidate_on_its_own_needs_the_gate_to_have_passed(
    tiny_lake, instance, monkeypatch
):
    store = local_resources(tiny_lake)["model_store"]
    before = store.current_version()
    monkeypatch.setattr(gate, "gate_failures", lambda candidate, promoted: ["constructed failure"])
    result = train_and_promote(tiny_lake, instance)
    version = materialization(result, "model", "two_tower_candidate")["model_version"]
    assert store.card(version)["gate"] == {
        "passed": False,
        "failures": ["constructed failure"],
        "promoted_version": before,
    }

    # model/promoted_model materialised alone, around the check, as from the UI
    alone = dg.materialize(
        [gate.promoted_model],
        resources={"model_store": store},
        instance=instance,
        raise_on_error=False,
    )

    assert not alone.success
    errors = [e.event_specific_data.error.message for e in alone.all_events if e.is_step_failure]
    assert f"model {version} is not promoted: it failed the promotion gate" in errors[0]
    assert store.current_version() == before


def test_a_failed_gate_stops_promotion_and_keeps_the_promoted_model(
    tiny_lake, instance, monkeypatch
):
    store = local_resources(tiny_lake)["model_store"]
    # On 200 customers the gate's outcome is noise: let a first candidate through.
    with monkeypatch.context() as patched:
        patched.setattr(gate, "gate_failures", lambda candidate, promoted: [])
        train_and_promote(tiny_lake, instance)
    before = store.current_version()
    assert before is not None
    # A bar no model can clear: the promoted model scores 2.0 on the candidate's holdout week.
    monkeypatch.setattr(evaluate, "evaluate_blends", far_better_blend)

    result = train_and_promote(tiny_lake, instance)

    checks = [e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate"]
    assert not checks[0].passed
    assert store.current_version() == before
    assert not [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["model", "promoted_model"])
    ]


def test_new_evaluation_figures_void_the_earlier_gate_verdict(tiny_lake, instance, monkeypatch):
    monkeypatch.setattr(gate, "gate_failures", lambda candidate, promoted: [])
    result = train_and_promote(tiny_lake, instance)
    version = materialization(result, "model", "two_tower_candidate")["model_version"]
    store = local_resources(tiny_lake)["model_store"]
    assert store.card(version)["gate"]["passed"] is True

    # model/evaluation materialised again on its own, without its check
    again = dg.materialize(
        [assets.evaluation], resources=local_resources(tiny_lake), instance=instance
    )

    assert again.success
    assert store.card(version)["gate"] is None
    assert not_promotable(store.card(version), "another") == "the promotion gate has not checked it"


def test_evaluation_fits_the_learned_rule_on_the_holdout_week_beside_the_model(
    tiny_lake, instance, monkeypatch
):
    # 200 customers: fewer buy in the holdout week than a rule needs by default
    monkeypatch.setattr(learned, "MIN_CUSTOMERS", 5)
    monkeypatch.setattr(gate, "gate_failures", lambda candidate, promoted: [])
    result = train_and_promote(tiny_lake, instance)
    version = materialization(result, "model", "two_tower_candidate")["model_version"]
    store = local_resources(tiny_lake)["model_store"]

    figures = materialization(result, "model", "evaluation")
    assert figures["learned_rule_customers"] >= 5
    rule = learned.LearnedRule.load(store.version_dir(version), SHIPPED_BLENDS["A"])
    assert rule.customers == figures["learned_rule_customers"]
    assert store.current_version() == version

    # the task-A blend figures are those of rules cross-fitted on the week's customers, as the
    # promoted model's are when a later candidate is held against it on its own week
    card = store.card(version)
    lake_root = local_resources(tiny_lake)["lake"].root_uri
    frames = read_lake(lake_root, card["lake_versions"])
    bought = purchases(frames)
    week = evaluate.holdout(frames, bought, as_cutoff(card["cutoff"]))
    trained = TrainedModel.load(store.version_dir(version))
    _, pool = evaluate.model_pool(trained, frames, bought, week)
    folds = learned.cross_fitted_scores(pool, week.targets("A"), SHIPPED_BLENDS["A"])
    expected, _ = evaluate_task(
        blend.recommend(pool, learned.CrossFitted(folds, SHIPPED_BLENDS["A"]), 10),
        week.targets("A"),
        week.bought_before,
        week.segments,
        len(week.index),
    )
    assert figures["A/blend/ndcg@5"] == pytest.approx(expected["ndcg@5"])
    same_week = evaluate.evaluate_blends(
        lake_root, store.version_dir(version), card["cutoff"], card["lake_versions"]
    )
    assert same_week["A"]["ndcg@5"] == pytest.approx(expected["ndcg@5"])

    # evaluated again where the week says too little: no rule, and none left from before
    monkeypatch.setattr(learned, "MIN_CUSTOMERS", 10**6)
    again = dg.materialize(
        [assets.evaluation], resources=local_resources(tiny_lake), instance=instance
    )
    assert again.success
    assert materialization(again, "model", "evaluation")["learned_rule_customers"] == 0
    assert learned.LearnedRule.load(store.version_dir(version), SHIPPED_BLENDS["A"]) is None


def test_a_retrain_learns_its_rule_from_the_earlier_weeks_kept_beside_earlier_models(
    tiny_lake, instance, monkeypatch
):
    monkeypatch.setattr(learned, "MIN_CUSTOMERS", 5)
    monkeypatch.setattr(gate, "gate_failures", lambda candidate, promoted: [])
    store = local_resources(tiny_lake)["model_store"]
    latest = assets.default_cutoff(local_resources(tiny_lake)["lake"])
    earlier = latest - timedelta(days=7)

    first = train_and_promote(tiny_lake, instance, cutoff=earlier.isoformat())
    second = train_and_promote(tiny_lake, instance, cutoff=latest.isoformat())

    kept = {
        week: learned.WeekRows.load(store.version_dir(version))
        for week, result in ((earlier, first), (latest, second))
        if (version := materialization(result, "model", "two_tower_candidate")["model_version"])
    }
    assert {w: rows.week for w, rows in kept.items()} == {w: w.isoformat() for w in kept}
    figures = materialization(second, "model", "evaluation")
    assert figures["learned_rule_weeks"] == f"{earlier.isoformat()}, {latest.isoformat()}"
    assert figures["learned_rule_customers"] == sum(rows.customers for rows in kept.values())
    # evaluated again now that the later week is kept in the store, the earlier model's rule
    # still learns only from weeks before its own
    first_version = materialization(first, "model", "two_tower_candidate")["model_version"]
    card = store.card(first_version)
    again = evaluate.evaluate_bundle(
        local_resources(tiny_lake)["lake"].root_uri,
        store.version_dir(first_version),
        card["cutoff"],
        card["lake_versions"],
        earlier=assets.other_versions(store, first_version),
    )
    assert latest.isoformat() not in again["learned_rule_weeks"]
    assert again["learned_rule_weeks"][-1] == earlier.isoformat()


def test_make_evaluate_fits_the_shipped_rule_on_four_weeks_each_scored_by_an_earlier_model(
    tiny_lake, monkeypatch
):
    monkeypatch.setattr(learned, "MIN_CUSTOMERS", 5)
    trained_before, weeks, tuned_on, fit_on = [], [], [], []
    train, holdout, tune_weeks = evaluate.train, evaluate.holdout, blend.tune_weeks
    fit_rows = learned.fit_rows

    def recorded_fit(rows, explain, threads=None):
        fit_on.append(rows)
        return fit_rows(rows, explain, threads)

    def recorded_train(frames, cutoff, config):
        trained_before.append(cutoff)
        return train(frames, cutoff, config)

    def recorded_holdout(frames, bought, cutoff):
        weeks.append(holdout(frames, bought, cutoff))
        return weeks[-1]

    def recorded_tuning(pools, allow_repeats):
        tuned_on.append(len(pools))
        return tune_weeks(pools, allow_repeats=allow_repeats)

    monkeypatch.setattr(evaluate, "train", recorded_train)
    monkeypatch.setattr(evaluate, "holdout", recorded_holdout)
    monkeypatch.setattr(blend, "tune_weeks", recorded_tuning)
    monkeypatch.setattr(learned, "fit_rows", recorded_fit)
    frames = read_lake(local_resources(tiny_lake)["lake"].root_uri)
    cutoff = as_cutoff(assets.default_cutoff(local_resources(tiny_lake)["lake"]))

    rules = evaluate.blend_rules(frames, purchases(frames), cutoff, TwoTowerConfig(epochs=1))

    days = [(cutoff - week.cutoff).days for week in weeks]
    assert days == [28, 21, 14, 7]
    assert [(cutoff - before).days for before in trained_before] == [28, 14]
    assert tuned_on == [2, 2]  # the tuned weights (`tuned_blend`): the two latest weeks, per task
    rule = rules["blend"]["A"]
    assert isinstance(rule, learned.LearnedRule)
    assert len(fit_on) == 1 and len(fit_on[0]) == 4
    assert rule.customers == sum(rows.customers for rows in fit_on[0])
    assert all(rows.customers > 0 for rows in fit_on[0])


def test_the_evaluation_command_stops_before_training_on_a_week_without_purchases(
    tiny_lake, tmp_path, capsys
):
    lake_root = local_resources(tiny_lake)["lake"].root_uri
    not_a_folder = tmp_path / "report"
    not_a_folder.write_text("")
    command = ["--lake", lake_root, "--dataset", "synthetic", "--cutoffs", "2030-01-07"]

    with pytest.raises(SystemExit):
        evaluate.main([*command, "--out", str(not_a_folder)])
    assert f"--out {not_a_folder}" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no purchases by known customers in the week from 2030"):
        evaluate.main([*command, "--out", str(tmp_path / "out")])


def test_a_candidate_config_with_no_epoch_or_thread_is_refused():
    for wrong in ({"epochs": 0}, {"threads": 0}):
        with pytest.raises(ValueError, match="greater than or equal to 1"):
            assets.CandidateConfig(**wrong)
    assert assets.CandidateConfig(epochs=1, threads=1).epochs == 1


def test_the_candidate_trains_as_many_epochs_as_the_model_defaults_to():
    """The asset keeps the number apart from the model code (no torch at load): they must agree."""
    assert assets.CandidateConfig().epochs == TwoTowerConfig().epochs

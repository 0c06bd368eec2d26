"""The model store: cards and the promotion pointer are replaced whole or not at all, and old
versions are removed whole, never the promoted one."""

import json
import multiprocessing
import os
import shutil
from datetime import date, timedelta

import pytest

from contoso_recs.recommender import learned
from contoso_recs.resources.model_store import (
    CARD_FILE,
    CURRENT_FILE,
    MIN_KEEP_CUTOFFS,
    REMOVING_PREFIX,
    ModelStore,
)


def store_with(tmp_path, *versions: str) -> ModelStore:
    store = ModelStore(root=str(tmp_path))
    for version in versions:
        store.write_card(version, {"version": version, "metrics": {"A": 0.5}})
    return store


def test_an_interrupted_card_update_leaves_the_previous_card(tmp_path, monkeypatch):
    store = store_with(tmp_path, "v1")

    def interrupted(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(OSError, match="No space left"):
        store.update_card("v1", gate={"passed": True})

    assert store.card("v1") == {"version": "v1", "metrics": {"A": 0.5}}
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == [CARD_FILE]  # nothing left
    assert (tmp_path / "v1" / CARD_FILE).stat().st_mode & 0o777 == 0o644


def promote_until(root: str, version: str, start, stop, promotions) -> None:
    store = ModelStore(root=root)
    start.wait()
    while not stop.is_set():
        store.promote(version)
        with promotions.get_lock():
            promotions.value += 1


def test_promotions_at_once_leave_a_whole_pointer(tmp_path):
    store = store_with(tmp_path, "20261123-aaaaaaaa", "20261130-bb")
    context = multiprocessing.get_context("spawn")
    start, stop = context.Barrier(3), context.Event()
    promotions = context.Value("i", 0)
    writers = [
        context.Process(
            target=promote_until, args=(str(tmp_path), version, start, stop, promotions)
        )
        for version in store.versions()
    ]
    for writer in writers:
        writer.start()
    start.wait()  # both writers are ready: they promote at once while this reads
    seen = set()
    try:
        while promotions.value < 2_000 and all(writer.is_alive() for writer in writers):
            seen.add(store.current_version())  # raises on a half-written pointer
    finally:
        stop.set()
        for writer in writers:
            writer.join()

    assert all(writer.exitcode == 0 for writer in writers)
    assert promotions.value >= 2_000
    assert seen <= {None, *store.versions()} and len(seen - {None}) == 2
    assert store.current_version() in store.versions()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{CURRENT_FILE}")]


@pytest.mark.parametrize("text", ["", "{}", '{"version": ""}', "[1]", "{not json"])
def test_a_damaged_promotion_pointer_is_a_clear_error(tmp_path, text):
    store = store_with(tmp_path, "v1")
    (tmp_path / CURRENT_FILE).write_text(text)

    with pytest.raises(ValueError, match="does not name a promoted model version"):
        store.current_version()
    store.promote("v1")  # promoting again mends it
    assert store.current_version() == "v1"
    assert json.loads((tmp_path / CURRENT_FILE).read_text()) == {"version": "v1"}


def weekly_store(tmp_path, weeks: int, **config) -> ModelStore:
    """A store with one version a week, oldest first: `2026MMDD-w<n>` with its cutoff."""
    store = ModelStore(root=str(tmp_path), **config)
    for week in range(weeks):
        cutoff = date(2026, 1, 5) + timedelta(days=7 * week)
        store.write_card(f"{cutoff:%Y%m%d}-w{week}", {"cutoff": cutoff.isoformat()})
    return store


def test_old_versions_go_but_the_newest_and_the_promoted_one_stay(tmp_path):
    store = weekly_store(tmp_path, 8, keep_cutoffs=4)
    oldest, *_ = store.versions()
    store.promote(oldest)  # a rollback to the first model
    training = tmp_path / "20260301-training"  # a model still training: no card yet
    (training / "weights").mkdir(parents=True)

    removed = store.remove_old_versions()

    assert removed == ["20260112-w1", "20260119-w2", "20260126-w3"]
    assert store.versions() == [oldest, "20260202-w4", "20260209-w5", "20260216-w6", "20260223-w7"]
    assert store.current_version() == oldest
    assert (training / "weights").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert store.remove_old_versions() == []  # nothing more to remove


def test_a_retrain_replaces_its_week_and_a_model_just_trained_is_never_removed(tmp_path):
    store = weekly_store(tmp_path, 4, keep_cutoffs=4)
    retrain = {"cutoff": "2026-01-26", "trained_at": "2026-02-02T03:00:00+00:00"}
    store.write_card("20260126-retrain", retrain)  # the last week, again
    store.write_card("20251229-backfill", {"cutoff": "2025-12-29"})  # a past week, trained now

    assert store.remove_old_versions(protect={"20251229-backfill"}) == ["20260126-w3"]
    assert store.versions() == [
        "20251229-backfill",
        "20260105-w0",
        "20260112-w1",
        "20260119-w2",
        "20260126-retrain",
    ]
    assert store.remove_old_versions() == ["20251229-backfill"]


def test_reruns_of_one_week_keep_the_store_bounded(tmp_path):
    store = weekly_store(tmp_path, 12, keep_cutoffs=12)
    for rerun in range(30):  # make demo run again and again: the same cutoff each time
        version = f"20260330-rerun{rerun:02d}"
        store.write_card(
            version, {"cutoff": "2026-03-30", "trained_at": f"2026-04-06T03:{rerun:02d}:00"}
        )
        store.promote(version)
        store.remove_old_versions(protect={version})

    assert len(store.versions()) == 12
    assert store.current_version() == "20260330-rerun29"
    assert "20260105-w0" not in store.versions()  # the oldest week made room


def test_a_removal_cut_short_is_finished_by_the_next_one(tmp_path, monkeypatch):
    store = weekly_store(tmp_path, 5, keep_cutoffs=4)

    def power_cut(path, ignore_errors=False):
        raise KeyboardInterrupt  # the process stops after the rename, before the deletion

    monkeypatch.setattr(shutil, "rmtree", power_cut)
    with pytest.raises(KeyboardInterrupt):
        store.remove_old_versions()
    monkeypatch.undo()

    assert len(store.versions()) == 4  # the version being removed is gone from the store at once
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(REMOVING_PREFIX)]
    assert len(leftovers) == 1 and (leftovers[0] / CARD_FILE).exists()
    assert store.remove_old_versions() == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(REMOVING_PREFIX)]


def test_fewer_weeks_than_a_retrain_rule_learns_from_are_refused():
    assert MIN_KEEP_CUTOFFS >= learned.RULE_WEEKS
    with pytest.raises(Exception, match="greater than or equal to 4"):
        ModelStore(root="models", keep_cutoffs=MIN_KEEP_CUTOFFS - 1)

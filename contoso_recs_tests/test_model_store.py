"""The model store: cards and the promotion pointer are replaced whole or not at all."""

import json
import multiprocessing
import os

import pytest

from contoso_recs.resources.model_store import CARD_FILE, CURRENT_FILE, ModelStore


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

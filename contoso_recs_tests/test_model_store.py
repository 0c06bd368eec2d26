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


def promote_many(root: str, version: str, times: int) -> None:
    store = ModelStore(root=root)
    for _ in range(times):
        store.promote(version)


def test_promotions_at_once_leave_a_whole_pointer(tmp_path):
    store = store_with(tmp_path, "20261123-aaaaaaaa", "20261130-bb")
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=promote_many, args=(str(tmp_path), version, 300))
        for version in store.versions()
    ]
    for writer in writers:
        writer.start()
    seen = set()
    while any(writer.is_alive() for writer in writers):
        seen.add(store.current_version())  # raises on a half-written pointer
    for writer in writers:
        writer.join()

    assert all(writer.exitcode == 0 for writer in writers)
    assert seen <= {None, *store.versions()}
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

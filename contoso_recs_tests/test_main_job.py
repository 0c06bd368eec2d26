"""The main job end to end: generated or real sources into the lake, every row accounted for."""

from pathlib import Path

import polars as pl
import pytest

from contoso_recs.demo_data import layout, synthetic
from contoso_recs.environment import local_resources
from contoso_recs.lake.quarantine import QUARANTINE_TABLE
from contoso_recs.main_job import demo

SHARED_DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "completejourney"


def quarantine_counts(lake) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    rows = lake.read(QUARANTINE_TABLE).group_by("target_table", "reason").len()
    for table, reason, n in rows.iter_rows():
        counts.setdefault(table, {})[reason] = n
    return counts


def test_tiny_demo_quarantines_exactly_the_planted_bad_rows_and_loads_the_rest(tmp_path):
    messages: list[str] = []

    assert demo(tmp_path, "synthetic", "tiny", 0, messages.append, train_model=False)

    manifest = layout.read_manifest(tmp_path)
    lake = local_resources(tmp_path)["lake"]
    planted = {
        table: {reason: n for reason, n in reasons.items() if n}
        for table, reasons in manifest["bad_input"].items()
    }
    assert quarantine_counts(lake) == {table: r for table, r in planted.items() if r}
    for table in ("products", "orders", "order_lines", "customers", "product_views"):
        quarantined = sum(planted.get(table, {}).values())
        assert lake.row_count(table) + quarantined == manifest["counts"][table], table
    assert lake.row_count("product_images") + 1 == manifest["counts"]["product_images"]
    assert any("Lake tables:" in m for m in messages)


def test_rerunning_the_demo_reuses_the_sources_and_changes_no_table(tmp_path):
    demo(tmp_path, "synthetic", "tiny", 0, lambda _: None, train_model=False)
    lake = local_resources(tmp_path)["lake"]
    before = {t: lake.read(t).sort(pl.all()) for t in ("orders", "order_lines", "product_views")}
    messages: list[str] = []

    assert demo(tmp_path, "synthetic", "tiny", 0, messages.append, train_model=False)

    assert any(m.startswith("Reusing") for m in messages)
    for table, frame in before.items():
        assert lake.read(table).sort(pl.all()).equals(frame), table


@pytest.mark.skipif(not SHARED_DATASET.exists(), reason="../shared/datasets is not beside the repo")
def test_complete_journey_fills_the_lake_and_leaves_clickstream_and_images_empty(tmp_path):
    messages: list[str] = []

    assert demo(tmp_path, "completejourney", "demo", 0, messages.append, train_model=False)

    lake = local_resources(tmp_path)["lake"]
    assert lake.row_count("orders") == 155_848
    assert lake.row_count("products") == 92_331
    assert lake.row_count("customers") == 801
    quarantined = quarantine_counts(lake)
    # 4,836 lines of The Complete Journey name products missing from its own catalogue.
    assert quarantined == {"order_lines": {"unknown_product": 4_836}}
    assert lake.row_count("order_lines") + 4_836 == 1_469_307
    assert lake.row_count("product_images") == 0
    assert lake.row_count("product_views") == 0
    assert any("holds no files: product views stay empty" in m for m in messages)


def test_sources_generated_under_an_existing_lake_start_the_lake_afresh(tmp_path):
    demo(tmp_path, "synthetic", "tiny", 0, lambda _: None, train_model=False)
    lake = local_resources(tmp_path)["lake"]
    orders_before = lake.read("orders").sort("order_id")
    store = local_resources(tmp_path)["model_store"]  # a model of the earlier customers
    store.write_card("20261123-earlier", {"cutoff": "2026-11-23"})
    store.promote("20261123-earlier")
    (tmp_path / "serving" / "20261123-earlier").mkdir(parents=True)
    (tmp_path / "backtests" / "2026-11-16" / "models").mkdir(parents=True)
    synthetic.generate(tmp_path, "tiny", 1)
    messages: list[str] = []

    assert demo(tmp_path, "synthetic", "tiny", 1, messages.append, train_model=False)

    assert any(m.startswith("The sources changed since the lake was built") for m in messages)
    assert store.current_version() is None and store.versions() == []
    assert not (tmp_path / "serving").exists()
    assert not (tmp_path / "backtests").exists()
    assert not lake.read("orders").sort("order_id").equals(orders_before)
    assert lake.row_count("orders") + 1 == layout.read_manifest(tmp_path)["counts"]["orders"]


def test_the_demo_refuses_to_run_outside_the_local_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTOSO_RECS_ENV", "azure")
    messages: list[str] = []

    assert not demo(tmp_path, "synthetic", "tiny", 0, messages.append)

    assert "CONTOSO_RECS_ENV selects 'azure'" in messages[0]
    assert not (tmp_path / "sources").exists()

"""The serving/bundle asset: the promoted model's bundle, built from the lake and made live."""

import json
from dataclasses import replace

import dagster as dg
import numpy as np
import polars as pl
import pytest

from contoso_recs.automation.jobs import serving_bundle_job
from contoso_recs.definitions import build_definitions
from contoso_recs.environment import local_resources
from contoso_recs.main_job import demo
from contoso_recs.model.assets import CANDIDATE, PROMOTED
from contoso_recs.serving.assets import BUNDLE
from contoso_recs.serving.bundle import live_bundle_dir, read_bundle
from contoso_recs.serving.contract import ScoreRequest
from contoso_recs.serving.publish import DEFAULT_POLICY
from contoso_recs.serving.scorer import Scorer
from contoso_recs_tests.conftest import materialization


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    """A tiny lake with one trained model, promoted by hand (the gate is tested elsewhere)."""
    data_dir = tmp_path_factory.mktemp("tiny-serving")
    assert demo(data_dir, "synthetic", "tiny", 0, lambda _: None, train_model=False)
    definitions = build_definitions(local_resources(data_dir))
    with dg.instance_for_test() as instance:
        result = definitions.resolve_implicit_global_asset_job_def().execute_in_process(
            asset_selection=[CANDIDATE],
            instance=instance,
            run_config={"ops": {"model__two_tower_candidate": {"config": {"epochs": 1}}}},
        )
        version = materialization(result, "model", "two_tower_candidate")["model_version"]
    local_resources(data_dir)["model_store"].promote(version)
    return data_dir, version


def test_the_bundle_is_published_for_the_promoted_model_with_every_customer(promoted, instance):
    data_dir, version = promoted
    definitions = build_definitions(local_resources(data_dir))

    result = definitions.resolve_job_def(serving_bundle_job.name).execute_in_process(
        instance=instance
    )

    metadata = materialization(result, "serving", "bundle")
    assert metadata["model_version"] == version
    serving_root = data_dir / "serving"
    assert json.loads((serving_root / "current.json").read_text())["model_version"] == version
    bundle = read_bundle(live_bundle_dir(serving_root))
    assert str(bundle.path) == metadata["bundle"]
    lake = local_resources(data_dir)["lake"]
    customers = lake.read("customers")["customer_id"].to_list()
    assert set(map(str, customers)) <= set(bundle.customer_ids.tolist())
    assert metadata["customers"] == len(bundle.customer_ids)
    assert metadata["products"] == len(bundle.product_ids)
    norms = np.linalg.norm(bundle.product_vectors, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)


def test_a_published_bundle_answers_with_the_product_page_policy(promoted, instance):
    data_dir, _ = promoted
    definitions = build_definitions(local_resources(data_dir))
    definitions.resolve_job_def(serving_bundle_job.name).execute_in_process(instance=instance)
    bundle = read_bundle(live_bundle_dir(data_dir / "serving"))
    lake = local_resources(data_dir)["lake"]
    lines = lake.read("order_lines").join(lake.read("orders"), on="order_id")
    buyer = lines.group_by("customer_id").len().sort("len", descending=True)["customer_id"][0]
    bought = set(lines.filter(pl.col("customer_id") == buyer)["product_id"].cast(str).to_list())
    viewed = bundle.product_ids[0]

    assert bundle.policy == DEFAULT_POLICY
    answer = Scorer(bundle).recommend(ScoreRequest(str(buyer), viewed, k=10))
    no_repeats = replace(bundle, policy=replace(DEFAULT_POLICY, allow_repeats=False))
    discovery = Scorer(no_repeats).recommend(ScoreRequest(str(buyer), viewed, k=10))

    recommended = [r["product_id"] for r in answer["recommendations"]]
    assert answer["fallback"] is None
    assert len(recommended) == 10
    assert viewed not in recommended
    new_to_them = [r["product_id"] for r in discovery["recommendations"]]
    assert len(new_to_them) == 10
    assert not set(new_to_them) & bought


def test_the_bundle_is_published_after_promotion_in_the_training_job(promoted):
    data_dir, _ = promoted
    graph = build_definitions(local_resources(data_dir)).resolve_asset_graph()

    assert PROMOTED in graph.get(BUNDLE).parent_keys
    job = build_definitions(local_resources(data_dir)).resolve_job_def("train_and_promote")
    assert BUNDLE in job.asset_layer.executable_asset_keys

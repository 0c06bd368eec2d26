"""The code location loads, with one asset graph whatever the environment."""

import dagster as dg
import pytest

from contoso_recs.definitions import defs
from contoso_recs.environment import Environment, resolve_environment
from contoso_recs.lake import keys

LAKE_TABLES = keys.LAKE_TABLES


def test_definitions_load_with_every_lake_table_sensor_and_job(monkeypatch, tmp_path):
    monkeypatch.setenv("CONTOSO_RECS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CONTOSO_RECS_ENV", raising=False)

    definitions = defs()

    graph = definitions.resolve_asset_graph()
    assert set(LAKE_TABLES) <= set(graph.get_all_asset_keys())
    assert {key.path[0] for key in graph.get_all_asset_keys()} == {
        "source",
        "lake",
        "model",
        "serving",
    }
    assert definitions.resolve_sensor_def("clickstream_sensor")
    assert definitions.resolve_job_def("lake_refresh")
    assert definitions.resolve_job_def("clickstream_hourly")
    checks = {check.name for check in graph.asset_check_keys}
    assert {"unique_order_id", "non_negative_quantity", "unique_landed_hour_event_id"} <= checks


def test_each_lake_table_is_downstream_of_its_source_system(monkeypatch, tmp_path):
    monkeypatch.setenv("CONTOSO_RECS_DATA_DIR", str(tmp_path))
    graph = defs().resolve_asset_graph()

    def upstream(key: dg.AssetKey) -> set[dg.AssetKey]:
        return graph.get(key).parent_keys

    assert keys.TRANSACTIONS_SOURCE in upstream(keys.ORDERS)
    assert keys.CLICKSTREAM_SOURCE in upstream(keys.PRODUCT_VIEWS)
    assert keys.PRODUCTS in upstream(keys.PRODUCT_VIEWS)
    assert keys.CRM_SOURCE in upstream(keys.CUSTOMERS)
    assert keys.PRODUCT_IMAGES in upstream(keys.PRODUCT_IMAGE_FEATURES)
    assert {keys.ORDERS, keys.CUSTOMERS, keys.PRODUCT_VIEWS} <= upstream(keys.QUARANTINE)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, Environment.LOCAL),
        ({"CONTOSO_RECS_ENV": "Azure"}, Environment.AZURE),
        ({"DAGSTER_CLOUD_DEPLOYMENT_NAME": "prod"}, Environment.AZURE),
        ({"DAGSTER_CLOUD_DEPLOYMENT_NAME": "prod", "CONTOSO_RECS_ENV": "local"}, Environment.LOCAL),
    ],
)
def test_environment_is_chosen_from_the_variable_then_the_deployment(environ, expected):
    assert resolve_environment(environ) is expected


def test_an_unknown_environment_is_a_clear_error():
    with pytest.raises(ValueError, match="'staging' is not an environment; choose one of local"):
        resolve_environment({"CONTOSO_RECS_ENV": "staging"})


def test_importing_the_code_location_reads_no_environment(monkeypatch):
    monkeypatch.setenv("CONTOSO_RECS_ENV", "bogus")
    import importlib

    import contoso_recs.definitions as module

    importlib.reload(module)
    with pytest.raises(ValueError, match="bogus"):
        module.defs()

"""Publishing the promoted model's serving bundle for real-time recommendations."""

import dagster as dg

from contoso_recs.model.assets import PROMOTED
from contoso_recs.resources.lake import Lake
from contoso_recs.resources.model_store import ModelStore
from contoso_recs.resources.serving_store import ServingStore

SERVING_GROUP = "serving"
BUNDLE = dg.AssetKey(["serving", "bundle"])


@dg.asset(key=BUNDLE, deps=[PROMOTED], group_name=SERVING_GROUP, kinds={"numpy", "azureml"})
def serving_bundle(
    context: dg.AssetExecutionContext,
    lake: Lake,
    model_store: ModelStore,
    serving_store: ServingStore,
) -> dg.MaterializeResult:
    """The vectors and product lists the online endpoint answers product views from, for the
    promoted model and the customers' latest purchases."""
    from contoso_recs.serving.publish import build_and_publish

    version = model_store.current_version()
    if version is None:
        raise ValueError("no model has been promoted yet: materialise model/promoted_model first")
    published = build_and_publish(
        lake.root_uri, model_store.version_dir(version), version, serving_store.path()
    )
    context.log.info(
        f"serving bundle of model {version} is live: {published.products} products, "
        f"{published.customers} customers, {published.bytes / 1e6:.1f} MB at {published.path}"
    )
    return dg.MaterializeResult(
        metadata={
            "model_version": dg.MetadataValue.text(version),
            "bundle": dg.MetadataValue.path(str(published.path)),
            "products": dg.MetadataValue.int(published.products),
            "customers": dg.MetadataValue.int(published.customers),
            "owned_pairs": dg.MetadataValue.int(published.owned_pairs),
            "size_mb": dg.MetadataValue.float(round(published.bytes / 1e6, 2)),
        }
    )

"""Jobs: the lake refresh, the hourly clickstream load, training and serving."""

import dagster as dg

from contoso_recs.lake import keys
from contoso_recs.model.assets import CANDIDATE, EVALUATION, PROMOTED
from contoso_recs.serving.assets import BUNDLE
from contoso_recs.sources.clickstream import HOURLY_PARTITIONS

# What the incremental sources bring; product views arrive hour by hour through their sensor.
LAKE_REFRESH_ASSETS = (
    keys.PRODUCTS,
    keys.ORDERS,
    keys.ORDER_LINES,
    keys.PROMOTIONS,
    keys.CUSTOMERS,
    keys.PRODUCT_IMAGES,
    keys.PRODUCT_IMAGE_FEATURES,
)

# A failed load of the sources is run again by the instance, from the step that failed, up to
# LOAD_RETRIES times (Dagster run retries: the local instance turns them on in its dagster.yaml,
# `main_job.instance_config`; Dagster+ has them on), so a timeout or throttling of Azure SQL, Blob
# Storage or Dataverse does not leave an hour of product views unloaded until someone notices.
# Loads are idempotent (MERGE, or replacing the hours' partitions), so running one again is safe.
LOAD_RETRIES = 3
RETRIED_LOAD = {"dagster/max_retries": str(LOAD_RETRIES)}

lake_refresh_job = dg.define_asset_job(
    "lake_refresh",
    selection=dg.AssetSelection.assets(*LAKE_REFRESH_ASSETS),
    description=(
        "Bring products, orders, promotions, customers and product images up to date in the lake."
    ),
    tags=RETRIED_LOAD,
)

clickstream_job = dg.define_asset_job(
    "clickstream_hourly",
    selection=dg.AssetSelection.assets(keys.PRODUCT_VIEWS),
    partitions_def=HOURLY_PARTITIONS,
    description="Load the product views of one hour (or a range of hours, as one run).",
    tags=RETRIED_LOAD,
)

train_and_promote_job = dg.define_asset_job(
    "train_and_promote",
    selection=dg.AssetSelection.assets(CANDIDATE, EVALUATION, PROMOTED, BUNDLE),
    description="Train a candidate, evaluate it beside the baselines, promote it through the gate "
    "and publish its serving bundle.",
)

serving_bundle_job = dg.define_asset_job(
    "serving_bundle",
    selection=dg.AssetSelection.assets(BUNDLE),
    description="Republish the promoted model's serving bundle with the customers' latest "
    "purchases.",
)

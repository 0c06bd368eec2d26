"""The code location: every stage's definitions plus the resources of the chosen environment."""

from collections.abc import Mapping
from typing import Any

import dagster as dg

from contoso_recs.automation.clickstream_sensor import (
    clickstream_sensor,
    views_awaiting_products_sensor,
)
from contoso_recs.automation.jobs import (
    clickstream_job,
    lake_refresh_job,
    serving_bundle_job,
    train_and_promote_job,
)
from contoso_recs.automation.weekly import weekly_defs
from contoso_recs.environment import resolve_environment, resources_for
from contoso_recs.lake.checks import lake_checks_defs
from contoso_recs.lake.quarantine import quarantine_spec
from contoso_recs.model.definitions import model_defs
from contoso_recs.serving.definitions import serving_defs
from contoso_recs.sources.clickstream import clickstream_defs
from contoso_recs.sources.customers import customers_defs
from contoso_recs.sources.product_images import product_images_defs
from contoso_recs.sources.transactions import transactions_defs
from contoso_recs.weekly_email.assets import weekly_email_defs


def build_definitions(resources: Mapping[str, Any]) -> dg.Definitions:
    """The one asset graph, bound to the given implementation of each resource key."""
    return dg.Definitions.merge(
        transactions_defs(),
        customers_defs(),
        clickstream_defs(),
        product_images_defs(),
        lake_checks_defs(),
        model_defs(),
        weekly_email_defs(),
        weekly_defs(),
        serving_defs(),
        dg.Definitions(
            assets=[quarantine_spec],
            jobs=[lake_refresh_job, clickstream_job, train_and_promote_job, serving_bundle_job],
            sensors=[clickstream_sensor, views_awaiting_products_sensor],
        ),
        dg.Definitions(resources=dict(resources)),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(resources_for(resolve_environment()))

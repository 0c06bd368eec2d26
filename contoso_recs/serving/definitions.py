"""The serving stage's definitions."""

import dagster as dg

from contoso_recs.serving.assets import serving_bundle


def serving_defs() -> dg.Definitions:
    return dg.Definitions(assets=[serving_bundle])

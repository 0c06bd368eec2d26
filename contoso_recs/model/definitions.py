"""The model stage's definitions."""

import dagster as dg

from contoso_recs.model.assets import evaluation, two_tower_candidate
from contoso_recs.model.gate import promoted_model, promotion_gate


def model_defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[two_tower_candidate, evaluation, promoted_model], asset_checks=[promotion_gate]
    )

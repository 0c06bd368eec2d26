"""Watermarks of incremental extracts, kept in the metadata of each materialisation."""

import dagster as dg

WATERMARK = "watermark"


def previous_watermark(context: dg.AssetExecutionContext, asset_key: dg.AssetKey) -> str | None:
    """The watermark the asset's last materialisation recorded, or None for a full read."""
    event = context.instance.get_latest_materialization_event(asset_key)
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get(WATERMARK)
    return str(value.value) if value is not None and value.value else None

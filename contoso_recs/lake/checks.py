"""Asset checks on the contracts of the lake tables that later stages rely on."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl

from contoso_recs.lake import keys
from contoso_recs.resources.lake import Lake

EARLIEST_ACTIVITY = datetime(2000, 1, 1, tzinfo=UTC)


def _empty_result(table: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=True, metadata={"note": f"the lake has no {table} table yet; nothing to check"}
    )


def unique_key_check(
    asset_key: dg.AssetKey, key_columns: Sequence[str]
) -> dg.AssetChecksDefinition:
    table = keys.table_name(asset_key)

    @dg.asset_check(
        asset=asset_key,
        name=f"unique_{'_'.join(key_columns)}",
        description=f"No two rows of {table} share the key ({', '.join(key_columns)}).",
        blocking=True,
    )
    def check(lake: Lake) -> dg.AssetCheckResult:
        if not lake.exists(table):
            return _empty_result(table)
        duplicated = (
            (
                lake.scan(table)
                .group_by(key_columns)
                .len()
                .filter(pl.col("len") > 1)
                .select(pl.len())
            )
            .collect()
            .item()
        )
        return dg.AssetCheckResult(
            passed=duplicated == 0, metadata={"duplicated_keys": dg.MetadataValue.int(duplicated)}
        )

    return check


def non_negative_check(asset_key: dg.AssetKey, column: str) -> dg.AssetChecksDefinition:
    table = keys.table_name(asset_key)

    @dg.asset_check(
        asset=asset_key,
        name=f"non_negative_{column}",
        description=f"Every {column} in {table} is zero or more.",
        blocking=True,
    )
    def check(lake: Lake) -> dg.AssetCheckResult:
        if not lake.exists(table):
            return _empty_result(table)
        negative = lake.scan(table).filter(pl.col(column) < 0).select(pl.len()).collect().item()
        return dg.AssetCheckResult(
            passed=negative == 0, metadata={"negative_rows": dg.MetadataValue.int(negative)}
        )

    return check


def timestamp_range_check(asset_key: dg.AssetKey, column: str) -> dg.AssetChecksDefinition:
    table = keys.table_name(asset_key)

    @dg.asset_check(
        asset=asset_key,
        name=f"{column}_in_range",
        description=f"Every {column} in {table} lies between 2000 and tomorrow.",
    )
    def check(lake: Lake) -> dg.AssetCheckResult:
        if not lake.exists(table):
            return _empty_result(table)
        latest_allowed = datetime.now(UTC) + timedelta(days=1)
        span = (
            lake.scan(table)
            .select(
                pl.col(column).min().alias("earliest"),
                pl.col(column).max().alias("latest"),
                ((pl.col(column) < EARLIEST_ACTIVITY) | (pl.col(column) > latest_allowed))
                .sum()
                .alias("out_of_range"),
            )
            .collect()
        )
        out_of_range = int(span["out_of_range"].item() or 0)
        return dg.AssetCheckResult(
            passed=out_of_range == 0,
            metadata={
                "out_of_range_rows": dg.MetadataValue.int(out_of_range),
                "earliest": dg.MetadataValue.text(str(span["earliest"].item())),
                "latest": dg.MetadataValue.text(str(span["latest"].item())),
            },
        )

    return check


def orphan_check(
    asset_key: dg.AssetKey, column: str, parent_key: dg.AssetKey, parent_column: str
) -> dg.AssetChecksDefinition:
    """Counts rows whose reference has no parent row; a warning, since sources may lag."""
    table, parent = keys.table_name(asset_key), keys.table_name(parent_key)

    @dg.asset_check(
        asset=asset_key,
        name=f"{column}_known_in_{parent}",
        description=f"Counts {table} rows whose {column} is not in {parent}.",
        additional_deps=[parent_key],
    )
    def check(lake: Lake) -> dg.AssetCheckResult:
        if not lake.exists(table):
            return _empty_result(table)
        references = lake.scan(table).select(pl.col(column)).drop_nulls()
        parents = (
            lake.scan(parent).select(pl.col(parent_column).alias(column))
            if lake.exists(parent)
            else pl.LazyFrame(schema={column: pl.Int64})
        )
        counts = references.join(parents, on=column, how="anti").select(
            pl.len().alias("orphans"), pl.col(column).n_unique().alias("distinct")
        )
        total = references.select(pl.len()).collect().item()
        orphans, distinct = counts.collect().row(0)
        return dg.AssetCheckResult(
            passed=orphans == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "orphan_rows": dg.MetadataValue.int(orphans),
                "distinct_orphan_ids": dg.MetadataValue.int(distinct),
                "orphan_share": dg.MetadataValue.float(orphans / total if total else 0.0),
            },
        )

    return check


def lake_checks_defs() -> dg.Definitions:
    return dg.Definitions(
        asset_checks=[
            unique_key_check(keys.PRODUCTS, ["product_id"]),
            non_negative_check(keys.PRODUCTS, "price"),
            unique_key_check(keys.ORDERS, ["order_id"]),
            timestamp_range_check(keys.ORDERS, "ordered_at"),
            orphan_check(keys.ORDERS, "customer_id", keys.CUSTOMERS, "customer_id"),
            unique_key_check(keys.ORDER_LINES, ["order_id", "line_number"]),
            non_negative_check(keys.ORDER_LINES, "quantity"),
            orphan_check(keys.ORDER_LINES, "order_id", keys.ORDERS, "order_id"),
            orphan_check(keys.ORDER_LINES, "product_id", keys.PRODUCTS, "product_id"),
            unique_key_check(keys.PROMOTIONS, ["week_start", "product_id"]),
            orphan_check(keys.PROMOTIONS, "product_id", keys.PRODUCTS, "product_id"),
            unique_key_check(keys.CUSTOMERS, ["customer_id"]),
            unique_key_check(keys.PRODUCT_VIEWS, ["landed_hour", "event_id"]),
            timestamp_range_check(keys.PRODUCT_VIEWS, "viewed_at"),
            orphan_check(keys.PRODUCT_VIEWS, "customer_id", keys.CUSTOMERS, "customer_id"),
            unique_key_check(keys.PRODUCT_IMAGE_FEATURES, ["product_id"]),
        ]
    )

"""Products, orders, order lines and promotions from the transactional database into the lake."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl

from contoso_recs.lake import keys
from contoso_recs.lake.conform import (
    Column,
    Contract,
    Rule,
    as_flag,
    as_float,
    as_int,
    as_text,
    as_timestamp,
    conform,
)
from contoso_recs.lake.quarantine import report_quarantine, write_quarantine
from contoso_recs.lake.watermark import WATERMARK, previous_watermark
from contoso_recs.resources.lake import Lake
from contoso_recs.resources.transactional import TransactionalSource

SQL_TIMESTAMP = "%Y-%m-%d %H:%M:%S"
# What is read may carry fractions of a second: Azure SQL's datetime2 columns reach pyodbc as
# datetime values, and are text like 2026-11-01 09:05:01.250000.
SQL_TIMESTAMP_READ = "%Y-%m-%d %H:%M:%S%.f"
EARLIEST_ORDER = datetime(2000, 1, 1, tzinfo=UTC)


def modified_in_future(now: datetime) -> Rule:
    """A row stamped far ahead would hold the watermark there and hide later changes."""
    return Rule("modified_at_in_future", pl.col("modified_at") > now + timedelta(days=1))


PRODUCTS_CONTRACT = Contract(
    columns=[
        Column("product_id", as_int, required=True),
        Column("name", as_text, required=True),
        Column("department"),
        Column("category"),
        Column("brand"),
        Column("package_size"),
        Column("price", as_float),
        Column("introduced_at", as_timestamp(SQL_TIMESTAMP_READ)),
        Column("discontinued", as_flag, required=True),
        Column("modified_at", as_timestamp(SQL_TIMESTAMP_READ), required=True),
    ],
    rules=[
        Rule("negative_price", pl.col("price") < 0),
        modified_in_future(datetime.now(UTC)),
    ],
    unique_key=["product_id"],
    latest_by="modified_at",
)


def orders_contract(now: datetime) -> Contract:
    ordered_at = pl.col("ordered_at")
    return Contract(
        columns=[
            Column("order_id", as_int, required=True),
            Column("customer_id", as_int, required=True),
            Column("store_id", as_int),
            Column("channel"),
            Column("ordered_at", as_timestamp(SQL_TIMESTAMP_READ), required=True),
            Column("modified_at", as_timestamp(SQL_TIMESTAMP_READ), required=True),
        ],
        rules=[
            Rule(
                "ordered_at_out_of_range",
                (ordered_at < EARLIEST_ORDER) | (ordered_at > now + timedelta(days=1)),
            ),
            modified_in_future(now),
        ],
        unique_key=["order_id"],
        latest_by="modified_at",
    )


def order_lines_contract(known_product_ids: pl.Series) -> Contract:
    return Contract(
        columns=[
            Column("order_id", as_int, required=True),
            Column("line_number", as_int, required=True),
            Column("product_id", as_int, required=True),
            Column("quantity", as_int, required=True),
            Column("amount", as_float),
            Column("modified_at", as_timestamp(SQL_TIMESTAMP_READ), required=True),
        ],
        rules=[
            Rule("negative_quantity", pl.col("quantity") < 0),
            Rule("unknown_product", ~pl.col("product_id").is_in(known_product_ids.implode())),
            modified_in_future(datetime.now(UTC)),
        ],
        unique_key=["order_id", "line_number"],
        latest_by="modified_at",
    )


def as_week_start(raw: pl.Expr) -> pl.Expr:
    """A date, from a `date` column (2026-11-02) or a midnight `datetime2` (2026-11-02 00:00:00);
    a time of day other than midnight is not a week's start."""
    stamp = raw.str.to_datetime(SQL_TIMESTAMP_READ, strict=False, time_unit="us")
    midnight = stamp.dt.date().cast(pl.Datetime("us")) == stamp
    return pl.coalesce(
        raw.str.to_date("%Y-%m-%d", strict=False),
        pl.when(midnight).then(stamp.dt.date()),
    )


def promotions_contract(known_product_ids: pl.Series) -> Contract:
    """The weekly promotion plan: per week (its Monday) and product, the share of stores whose
    printed and digital mailer features the product, and the share that display it in store.

    A week's plan is written before the week starts, so the recommender may use the plan of the
    week it recommends for (a row revised once its week is under way is not used for that week).
    The extract reads changes by `modified_at`: to take a product out of a week's mailer, set its
    share to 0 rather than deleting the row; a row for a product not yet in the catalogue is
    quarantined (`unknown_product`) and loads once it is saved again after the product.
    """
    share = pl.col("mailer_share"), pl.col("display_share")
    return Contract(
        columns=[
            Column("week_start", as_week_start, required=True),
            Column("product_id", as_int, required=True),
            Column("mailer_share", as_float),
            Column("display_share", as_float),
            Column("modified_at", as_timestamp(SQL_TIMESTAMP_READ), required=True),
        ],
        rules=[
            Rule("week_start_not_monday", pl.col("week_start").dt.weekday() != 1),
            Rule("share_out_of_range", pl.any_horizontal([(c < 0) | (c > 1) for c in share])),
            Rule("unknown_product", ~pl.col("product_id").is_in(known_product_ids.implode())),
            modified_in_future(datetime.now(UTC)),
        ],
        unique_key=["week_start", "product_id"],
        latest_by="modified_at",
    )


def source_ref(*key_columns: str) -> pl.Expr:
    """`<key>@<modified_at>`: one version of one source row."""
    key = pl.concat_str([pl.col(c).fill_null("?") for c in key_columns], separator="/")
    return pl.concat_str([key, pl.col("modified_at").fill_null("?")], separator="@")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            keys.PRODUCTS,
            deps=[keys.TRANSACTIONS_SOURCE],
            description="The product catalogue: one row per product, with price and status.",
            group_name=keys.LAKE_GROUP,
            kinds={"delta", "polars"},
        ),
        dg.AssetSpec(
            keys.ORDERS,
            deps=[keys.TRANSACTIONS_SOURCE],
            description="Orders from every channel (store, web, app), one row per order.",
            group_name=keys.LAKE_GROUP,
            kinds={"delta", "polars"},
        ),
        dg.AssetSpec(
            keys.ORDER_LINES,
            deps=[keys.TRANSACTIONS_SOURCE, keys.PRODUCTS, keys.ORDERS],
            description="Order lines: which product, how many and for how much, per order.",
            group_name=keys.LAKE_GROUP,
            kinds={"delta", "polars"},
        ),
        dg.AssetSpec(
            keys.PROMOTIONS,
            deps=[keys.TRANSACTIONS_SOURCE, keys.PRODUCTS],
            description="The weekly promotion plan: per week and product, the share of stores "
            "whose mailer features it and the share that display it.",
            group_name=keys.LAKE_GROUP,
            kinds={"delta", "polars"},
        ),
    ],
    pool="transactional_source",
    can_subset=False,
)
def extract_transactions(
    context: dg.AssetExecutionContext, transactional_source: TransactionalSource, lake: Lake
):
    """Upsert the rows changed since the last watermark into the lake's transaction tables."""
    now = datetime.now(UTC)
    yield _extract_table(
        context, transactional_source, lake, keys.PRODUCTS, PRODUCTS_CONTRACT, ["product_id"]
    )
    yield _extract_table(
        context, transactional_source, lake, keys.ORDERS, orders_contract(now), ["order_id"]
    )
    known_products = lake.scan("products").select("product_id").collect().to_series()
    yield _extract_table(
        context,
        transactional_source,
        lake,
        keys.ORDER_LINES,
        order_lines_contract(known_products),
        ["order_id", "line_number"],
    )
    yield _extract_table(
        context,
        transactional_source,
        lake,
        keys.PROMOTIONS,
        promotions_contract(known_products),
        ["week_start", "product_id"],
    )


def _extract_table(
    context: dg.AssetExecutionContext,
    source: TransactionalSource,
    lake: Lake,
    asset_key: dg.AssetKey,
    contract: Contract,
    key_columns: list[str],
) -> dg.MaterializeResult:
    table = keys.table_name(asset_key)
    watermark = previous_watermark(context, asset_key) if lake.exists(table) else None
    raw = source.read_changed_rows(table, contract.raw_columns, watermark)
    conformed = conform(raw, contract, source_ref(*key_columns))

    write = lake.upsert(table, conformed.loaded, contract.unique_key, newer_when="modified_at")
    write_quarantine(lake, table, conformed.all_quarantined)
    report_quarantine(context, lake)
    watermark_after = latest_modification(conformed.loaded) or watermark
    again = " (rows read again at the watermark change nothing)" if watermark else ""
    context.log.info(
        f"{table} changed since {watermark or 'the beginning'}: {conformed.summary()}; "
        f"{write.rows_inserted} new and {write.rows_updated} updated in the lake{again}; "
        f"watermark now {watermark_after}; {write.uri} {write.state}"
    )
    return dg.MaterializeResult(
        asset_key=asset_key,
        metadata={
            **lake.table_metadata(write),
            **conformed.metadata(),
            "watermark_before": dg.MetadataValue.text(watermark or ""),
            WATERMARK: dg.MetadataValue.text(watermark_after or ""),
        },
    )


def latest_modification(loaded: pl.DataFrame) -> str | None:
    """The latest `modified_at` loaded, in the source's own text format.

    Only loaded rows move the watermark, so a row rejected for a timestamp in the future
    cannot hold it there and hide later changes.
    """
    latest = loaded["modified_at"].max()
    return latest.strftime(SQL_TIMESTAMP) if latest is not None else None


def transactions_defs() -> dg.Definitions:
    source = dg.AssetSpec(
        keys.TRANSACTIONS_SOURCE,
        description="Orders, order lines, the product catalogue and the weekly promotions in the "
        "transactional database.",
        group_name=keys.SOURCES_GROUP,
        kinds={"azure_sql"},
    )
    return dg.Definitions(assets=[source, extract_transactions])

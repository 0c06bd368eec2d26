"""The weekly email table: the top 5 products of every customer, one partition per week."""

import warnings
from datetime import UTC, date, datetime, time

import dagster as dg
import polars as pl

from contoso_recs.lake import keys
from contoso_recs.model.assets import CANDIDATE, EVALUATION, PROMOTED, lake_versions
from contoso_recs.resources.lake import Lake
from contoso_recs.resources.landing import PRODUCT_IMAGES_CONTAINER
from contoso_recs.resources.model_store import ModelStore

WEEKLY_TOP5 = dg.AssetKey(["lake", "weekly_top5"])
TABLE = keys.table_name(WEEKLY_TOP5)
GROUP = "weekly_email"
# A partition is the week the email goes out, Monday to Sunday, named by its Monday. The current
# week is a partition too (end_offset=1): it is written on its own Monday from the data before it.
WEEKLY_PARTITIONS = dg.WeeklyPartitionsDefinition(
    start_date="2017-01-02", day_offset=1, end_offset=1, timezone="UTC"
)
K = 5
DEADLINE_CRON = "0 9 * * 1"
# The model_version of a week written before any model passed the promotion gate.
NO_MODEL = "none"
CHECKS = {
    "five_per_customer": "Exactly 5 products for every customer known before the week.",
    "no_duplicate_products": "No product twice in a customer's list.",
    "products_on_sale": "Every product is in the catalogue, on sale and not discontinued.",
}


class WeeklyTop5Config(dg.Config):
    """Which of the recommender's shipped blends the email uses."""

    blend: str = "A"
    """A: any product, already-bought ones included; B: only products new to the customer."""
    chunk_customers: int = 10_000


def week_start(partition_key: str) -> datetime:
    return datetime.combine(date.fromisoformat(partition_key), time(), tzinfo=UTC)


def image_refs(lake: Lake) -> pl.DataFrame:
    """Where the email system finds each product's picture: container/path in the landing zone."""
    images = lake.read_or_empty(
        keys.table_name(keys.PRODUCT_IMAGES), {"product_id": pl.Int64, "path": pl.String}
    )
    return images.select(
        "product_id", (pl.lit(f"{PRODUCT_IMAGES_CONTAINER}/") + pl.col("path")).alias("image_ref")
    ).unique("product_id", keep="last")


def promotion_note(instance: dg.DagsterInstance, promoted: str | None) -> str | None:
    """Why the latest candidate is not the promoted model, or None when it is."""
    event = instance.get_latest_materialization_event(CANDIDATE)
    if event is None or event.asset_materialization is None:
        return None
    candidate = str(event.asset_materialization.metadata["model_version"].value)
    if candidate == promoted:
        return None
    record = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(EVALUATION, "promotion_gate")
    )
    evaluation = record.event.dagster_event.event_specific_data if record and record.event else None
    failures = evaluation.metadata.get("failures") if evaluation is not None else None
    why = f": {failures.value}" if failures is not None else " (its run did not finish)"
    return f"the latest candidate {candidate} was not promoted{why}"


@dg.asset(
    key=WEEKLY_TOP5,
    deps=[
        PROMOTED,
        keys.PRODUCTS,
        keys.ORDERS,
        keys.ORDER_LINES,
        keys.PROMOTIONS,
        keys.CUSTOMERS,
    ],
    partitions_def=WEEKLY_PARTITIONS,
    group_name=GROUP,
    kinds={"delta", "pytorch"},
    check_specs=[
        dg.AssetCheckSpec(name, asset=WEEKLY_TOP5, description=description)
        for name, description in CHECKS.items()
    ],
)
def weekly_top5(
    context: dg.AssetExecutionContext,
    config: WeeklyTop5Config,
    lake: Lake,
    model_store: ModelStore,
):
    """The 5 products each customer sees in this week's email, with name, price and picture."""
    from contoso_recs.recommender.blend import SHIPPED_BLENDS
    from contoso_recs.recommender.data import read_lake, week_mailer
    from contoso_recs.recommender.learned import LearnedRule, UnusableRule
    from contoso_recs.recommender.train import TrainedModel
    from contoso_recs.recommender.weekly import eligible_customers, weekly_recommendations

    week = week_start(context.partition_key)
    if config.blend not in SHIPPED_BLENDS:
        raise ValueError(f"blend must be one of {sorted(SHIPPED_BLENDS)}, not {config.blend!r}")
    version = model_store.current_version()
    card = model_store.card(version) if version else {}
    if version and date.fromisoformat(card["cutoff"]) > week.date():
        raise ValueError(
            f"the promoted model {version} was trained on orders up to {card['cutoff']}, after "
            f"the start of week {context.partition_key}: train and promote a model with a cutoff "
            "on or before it to write this week"
        )
    note = promotion_note(context.instance, version)
    if version is None:
        note = (
            f"{note or 'no model has been trained yet'}, and no model has been promoted before: "
            "this week's table ranks by the blend's other signals alone (repeat purchases, "
            "co-purchases, categories, best sellers; for blend B also ALS preference)"
        )
        context.log.warning(note)
    elif note:
        context.log.warning(f"{note}; this week's table uses the promoted model {version}")

    versions = lake_versions(lake)
    frames = read_lake(lake.root_uri, versions)
    trained = TrainedModel.load(model_store.version_dir(version), device="cpu") if version else None
    blend = SHIPPED_BLENDS[config.blend]
    # with repeats allowed, the rule learned with the promoted model (its holdout week and up
    # to three earlier weeks) ranks
    learned = None
    if version and blend.allow_repeats:
        try:
            learned = LearnedRule.load(model_store.version_dir(version), blend)
        except UnusableRule as error:
            context.log.warning(
                f"{error}: this week's table is ranked by the shipped weights (evaluating "
                f"model {version} again refits its rule)"
            )
    mailer = week_mailer(frames.promotions, week)
    if blend.mailer_weight and mailer.is_empty():
        context.log.warning(
            f"lake/promotions holds no mailer for the week of {context.partition_key}: blend "
            f"{config.blend} ranks without it (load the week's promotion plan before its table)"
        )
    context.log.info(
        f"scoring week {context.partition_key} with model {version or NO_MODEL} "
        f"(blend {config.blend}, repeats allowed: {blend.allow_repeats}, ranked by "
        f"{'the learned rule' if learned else 'the shipped weights'}), lake {versions}"
    )
    table = weekly_recommendations(
        frames,
        trained,
        week,
        learned or blend,
        version or NO_MODEL,
        k=K,
        chunk_customers=config.chunk_customers,
        image_refs=image_refs(lake),
    )
    write = lake.replace_where(
        TABLE, table, f"week = '{context.partition_key}'", partition_by=["week"]
    )
    written = lake.scan(TABLE).filter(pl.col("week") == week.date()).collect()
    customers = eligible_customers(frames, week)
    on_sale = frames.products.filter(
        ~pl.col("discontinued").fill_null(False)
        & (pl.col("introduced_at").is_null() | (pl.col("introduced_at") < week))
    )
    reasons = dict(written.group_by("reason").len().iter_rows())
    context.log.info(
        f"wrote {written.height} rows for {written['customer_id'].n_unique()} customers to "
        f"{write.uri} (Delta version {write.version}); reasons {reasons}"
    )
    yield dg.MaterializeResult(
        metadata={
            **lake.table_metadata(write),
            "dagster/partition_row_count": dg.MetadataValue.int(written.height),
            "customers": dg.MetadataValue.int(written["customer_id"].n_unique()),
            "distinct_products": dg.MetadataValue.int(written["product_id"].n_unique()),
            "reasons": dg.MetadataValue.json(reasons),
            "model_version": dg.MetadataValue.text(version or NO_MODEL),
            "model_cutoff": dg.MetadataValue.text(card.get("cutoff", "")),
            "blend": dg.MetadataValue.json(
                {
                    "name": config.blend,
                    "ranked_by": "learned rule" if learned else "weights",
                    **({"learned_on_customers": learned.customers} if learned else {}),
                    **blend.to_json(),
                }
            ),
            "lake_versions": dg.MetadataValue.json(versions),
            "mailer_products": dg.MetadataValue.int(mailer.height),
            "promotion": dg.MetadataValue.text(note or f"{version} is the latest candidate"),
        }
    )
    yield from table_checks(written, customers, on_sale["product_id"])


def table_checks(written: pl.DataFrame, customers, on_sale: pl.Series):
    """The email team's rules, checked on the partition as read back from the lake."""
    per_customer = written.group_by("customer_id").len()
    expected = pl.DataFrame({"customer_id": customers}, schema={"customer_id": pl.Int64})
    counts = expected.join(per_customer, on="customer_id", how="full", coalesce=True)
    wrong = counts.filter(pl.col("len").fill_null(0) != K)
    yield dg.AssetCheckResult(
        check_name="five_per_customer",
        passed=wrong.is_empty(),
        metadata={
            "customers": dg.MetadataValue.int(len(customers)),
            "customers_without_exactly_5": dg.MetadataValue.int(wrong.height),
        },
    )
    duplicates = written.group_by("customer_id", "product_id").len().filter(pl.col("len") > 1)
    yield dg.AssetCheckResult(
        check_name="no_duplicate_products",
        passed=duplicates.is_empty(),
        metadata={"duplicate_pairs": dg.MetadataValue.int(duplicates.height)},
    )
    # a row without a product is off sale too (is_in gives null for it, which filter drops)
    off_sale = written.filter(~pl.col("product_id").is_in(on_sale.implode()).fill_null(False))
    yield dg.AssetCheckResult(
        check_name="products_on_sale",
        passed=off_sale.is_empty(),
        metadata={
            "rows_off_sale": dg.MetadataValue.int(off_sale.height),
            "products_off_sale": dg.MetadataValue.json(
                sorted(off_sale["product_id"].drop_nulls().unique().to_list())[:20]
            ),
        },
    )


# Monday 09:00 UTC: the email team sends from then on, so this week's partition must exist.
# Dagster marks these checks as superseded by FreshnessPolicy, but a policy judges the asset's
# latest materialisation whatever its partition (a backfill of an old week would pass it), while
# this check asks for this week's partition itself; hence the check, and its warning silenced.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=dg.SupersessionWarning)
    freshness_checks = dg.build_time_partition_freshness_checks(
        assets=[WEEKLY_TOP5], deadline_cron=DEADLINE_CRON, timezone="UTC"
    )
    freshness_sensor = dg.build_sensor_for_freshness_checks(
        freshness_checks=freshness_checks, name="weekly_top5_freshness"
    )


def weekly_email_defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[weekly_top5], asset_checks=freshness_checks, sensors=[freshness_sensor]
    )

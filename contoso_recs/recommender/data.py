"""Lake frames in, point-in-time interactions, features and temporal splits out.

Every function that takes a cutoff T uses only events strictly before T, so a feature built for
T can never see the week it is asked to predict. The test week is the 7 days starting at T.
"""

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import polars as pl
from deltalake import DeltaTable

log = logging.getLogger(__name__)

LAKE_TABLES = (
    "products",
    "orders",
    "order_lines",
    "promotions",
    "customers",
    "product_views",
    "product_image_features",
)
UTC_US = pl.Datetime("us", "UTC")
# Sources a dataset may lack (The Complete Journey has no clickstream and no images; a lake
# written before the promotions were extracted has no promotions): a missing table of these reads
# as empty, with its lake schema.
OPTIONAL_TABLES = {
    "promotions": {
        "week_start": pl.Date,
        "product_id": pl.Int64,
        "mailer_share": pl.Float64,
        "display_share": pl.Float64,
        "modified_at": UTC_US,
    },
    "product_views": {
        "event_id": pl.String,
        "customer_id": pl.Int64,
        "session_id": pl.String,
        "product_id": pl.Int64,
        "viewed_at": UTC_US,
        "dwell_seconds": pl.Float64,
        "device": pl.String,
        "landed_hour": pl.Int64,
        "landed_date": pl.Date,
    },
    "product_image_features": {
        "product_id": pl.Int64,
        "sha256": pl.String,
        "features": pl.List(pl.Float32),
    },
}
TEST_DAYS = 7
MAX_QUANTITY = 10
PURCHASE_WEIGHTS = ("orders", "quantity", "amount")
HEAVY_MIN_ORDERS = 12
HEAVY_WINDOW_DAYS = 84


@dataclass(frozen=True)
class LakeFrames:
    """The lake tables the recommender reads, as polars frames."""

    products: pl.DataFrame
    orders: pl.DataFrame
    order_lines: pl.DataFrame
    customers: pl.DataFrame
    product_views: pl.DataFrame
    product_image_features: pl.DataFrame
    promotions: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema=OPTIONAL_TABLES["promotions"])
    )


@dataclass(frozen=True)
class TemporalSplit:
    """Purchases before the cutoff (train) and in the 7 days from it (test)."""

    cutoff: datetime
    train: pl.DataFrame
    test: pl.DataFrame


def read_lake(lake_root: str, versions: dict[str, int] | None = None) -> LakeFrames:
    """Every lake table under `lake_root`, each at its pinned Delta version when one is given.

    A missing optional table (product views, image features) reads as an empty frame.
    """
    versions = versions or {}
    root = lake_root.rstrip("/")
    frames = {}
    for table in LAKE_TABLES:
        path = f"{root}/{table}"
        if table in OPTIONAL_TABLES and not DeltaTable.is_deltatable(path):
            log.warning("no %s table at %s: read as empty", table, path)
            frames[table] = pl.DataFrame(schema=OPTIONAL_TABLES[table])
            continue
        frames[table] = pl.read_delta(path, version=versions.get(table))
        version = versions.get(table, "latest")
        log.info("read %s: %d rows (version %s)", table, frames[table].height, version)
    return LakeFrames(**frames)


def as_cutoff(value: str | date | datetime) -> datetime:
    """A cutoff as a UTC datetime; a date means midnight UTC at its start."""
    if isinstance(value, str):
        value = date.fromisoformat(value)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def purchases(frames: LakeFrames) -> pl.DataFrame:
    """One row per order line bought by a known customer: who, what, when, how many, how much."""
    lines = frames.order_lines.filter(pl.col("quantity") > 0)
    orders = frames.orders.filter(pl.col("customer_id").is_not_null())
    return (
        lines.join(orders.select("order_id", "customer_id", "ordered_at"), on="order_id")
        .select(
            "customer_id",
            "order_id",
            "product_id",
            pl.col("ordered_at").alias("at"),
            "quantity",
            "amount",
        )
        .sort("at", "order_id", "product_id")
    )


def week_mailer(promotions: pl.DataFrame, cutoff: datetime) -> pl.DataFrame:
    """The mailer of the week holding the cutoff (the week from its Monday): product_id and
    mailer_share, the share of stores whose mailer features the product, for the products in it.

    A week's promotion plan is written before the week starts, so this is known at the cutoff
    even though the week itself is not over; no other week's plan is read. A row written or
    revised at or after the cutoff is left out: the lake keeps a row's latest revision only, and
    one made once the week was under way may already say what happened in it.
    """
    monday = cutoff.date() - timedelta(days=cutoff.weekday())
    return promotions.filter(
        (pl.col("week_start") == monday)
        & (pl.col("mailer_share") > 0)
        & (pl.col("modified_at") < cutoff)
    ).select("product_id", "mailer_share")


def before(frame: pl.DataFrame, cutoff: datetime, column: str = "at") -> pl.DataFrame:
    """The rows of `frame` whose `column` is strictly before the cutoff."""
    return frame.filter(pl.col(column) < cutoff)


def temporal_split(bought: pl.DataFrame, cutoff: datetime, days: int = TEST_DAYS) -> TemporalSplit:
    """Train on purchases before the cutoff, test on the `days` days starting at it."""
    end = cutoff + timedelta(days=days)
    test = bought.filter((pl.col("at") >= cutoff) & (pl.col("at") < end))
    return TemporalSplit(cutoff=cutoff, train=before(bought, cutoff), test=test)


def history_events(
    bought: pl.DataFrame,
    views: pl.DataFrame | None = None,
    purchase_weight: str = "quantity",
    seconds_per_purchase: float = 120.0,
) -> pl.DataFrame:
    """Purchases and product views as weighted events: customer_id, product_id, at, kind, weight.

    A purchase weighs 1 for each order holding the product ("orders"), the quantity of its line
    capped at MAX_QUANTITY so that bulk lines such as fuel do not swamp a customer ("quantity"),
    or its amount ("amount"). A product view weighs its dwell time as a share of
    `seconds_per_purchase`, at most one purchase; with 0 seconds, views are left out. Anonymous
    product views are left out.
    """
    if purchase_weight not in PURCHASE_WEIGHTS:
        raise ValueError(
            f"purchase_weight must be one of {PURCHASE_WEIGHTS}, not {purchase_weight!r}"
        )
    if purchase_weight == "orders":
        bought = bought.unique(["customer_id", "order_id", "product_id"], maintain_order=True)
    weight = {
        "orders": pl.lit(1.0),
        "quantity": pl.col("quantity").clip(upper_bound=MAX_QUANTITY).cast(pl.Float64),
        "amount": pl.col("amount").clip(lower_bound=0.0),
    }[purchase_weight]
    events = [
        bought.select(
            "customer_id",
            "product_id",
            "at",
            pl.lit("purchase").alias("kind"),
            weight.alias("weight"),
        )
    ]
    if views is not None and seconds_per_purchase > 0:
        events.append(
            views.filter(pl.col("customer_id").is_not_null()).select(
                "customer_id",
                "product_id",
                pl.col("viewed_at").alias("at"),
                pl.lit("product_view").alias("kind"),
                (pl.col("dwell_seconds").fill_null(0.0).clip(0.0, seconds_per_purchase))
                .truediv(seconds_per_purchase)
                .alias("weight"),
            )
        )
    return pl.concat(events)


def order_counts(bought: pl.DataFrame, cutoff: datetime) -> pl.DataFrame:
    """Per customer and product: orders containing it before the cutoff, and the last one."""
    return (
        before(bought, cutoff)
        .group_by("customer_id", "product_id")
        .agg(
            pl.col("order_id").n_unique().alias("orders"),
            pl.col("at").max().alias("last_at"),
        )
    )


def decayed_history(
    bought: pl.DataFrame, cutoff: datetime, half_life_days: float, max_products: int
) -> pl.DataFrame:
    """Each customer's `max_products` strongest products before the cutoff, by orders.

    Strength is the number of orders containing the product, each order discounted by its age
    with the given half-life. Columns: customer_id, product_id, strength, rank (0 = strongest).
    """
    events = history_events(before(bought, cutoff), purchase_weight="orders")
    return strongest_products(events, cutoff, half_life_days, max_products)


def strongest_products(
    events: pl.DataFrame, cutoff: datetime, half_life_days: float, max_products: int
) -> pl.DataFrame:
    """Each customer's `max_products` strongest products in `events` (history_events) before
    the cutoff: the sum of event weights, each discounted by its age with the given half-life.
    Columns: customer_id, product_id, strength, rank (0 = strongest)."""
    age_days = (pl.lit(cutoff) - pl.col("at")).dt.total_seconds() / 86_400.0
    return (
        before(events, cutoff)
        .group_by("customer_id", "product_id")
        .agg((pl.col("weight") * 0.5 ** (age_days / half_life_days)).sum().alias("strength"))
        .sort(["customer_id", "strength", "product_id"], descending=[False, True, False])
        .with_columns(pl.int_range(pl.len()).over("customer_id").alias("rank"))
        .filter(pl.col("rank") < max_products)
    )


def customer_segments(
    bought: pl.DataFrame, customer_ids: list[int], cutoff: datetime
) -> pl.DataFrame:
    """Segment of each customer at the cutoff: new, light or heavy.

    New: no purchase before the cutoff. Heavy: at least HEAVY_MIN_ORDERS orders in the
    HEAVY_WINDOW_DAYS days before it (a weekly shopper). Light: everyone else.
    """
    window = bought.filter(
        (pl.col("at") < cutoff) & (pl.col("at") >= cutoff - timedelta(days=HEAVY_WINDOW_DAYS))
    )
    recent = window.group_by("customer_id").agg(pl.col("order_id").n_unique().alias("recent"))
    ever = (
        before(bought, cutoff)
        .select("customer_id")
        .unique()
        .with_columns(pl.lit(True).alias("known"))
    )
    return (
        pl.DataFrame({"customer_id": customer_ids}, schema={"customer_id": pl.Int64})
        .join(ever, on="customer_id", how="left")
        .join(recent, on="customer_id", how="left")
        .select(
            "customer_id",
            pl.when(pl.col("known").is_null())
            .then(pl.lit("new"))
            .when(pl.col("recent").fill_null(0) >= HEAVY_MIN_ORDERS)
            .then(pl.lit("heavy"))
            .otherwise(pl.lit("light"))
            .alias("segment"),
        )
    )


def catalogue(frames: LakeFrames, cutoff: datetime, current: bool = False) -> pl.DataFrame:
    """Products on sale at the cutoff: introduced before it (or undated) and not discontinued
    before it.

    The lake keeps each product's latest row, so a discontinued product counts as discontinued
    from its last change (`modified_at`): one discontinued at or after the cutoff was on sale at
    it, and leaving it out would let the later change decide what could be recommended then.
    `current` is for recommendations made now for a week starting at the cutoff: every product
    flagged discontinued is left out, whenever that happened.
    """
    introduced = pl.col("introduced_at").is_null() | (pl.col("introduced_at") < cutoff)
    discontinued = pl.col("discontinued").fill_null(False)
    if not current:
        discontinued = discontinued & (
            pl.col("modified_at").is_null() | (pl.col("modified_at") < cutoff)
        )
    return frames.products.filter(introduced & ~discontinued).sort("product_id")


def product_popularity(bought: pl.DataFrame, cutoff: datetime, days: int) -> pl.DataFrame:
    """Distinct customers buying each product in the `days` days before the cutoff."""
    window = bought.filter(
        (pl.col("at") < cutoff) & (pl.col("at") >= cutoff - timedelta(days=days))
    )
    return window.group_by("product_id").agg(pl.col("customer_id").n_unique().alias("customers"))

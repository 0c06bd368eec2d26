"""Where the local source systems live on disk, and how rows are written into them.

The local environment stands in for four cloud systems with plain files under
`<data_dir>/sources/`:

- `transactions.sqlite`: the Azure SQL database of products, orders, order lines and the
  weekly promotions;
- `blob/clickstream/YYYY/MM/DD/HH/part-NNNN.jsonl`: the Blob container of product views;
- `blob/product-images/<product_id>.png`: the Blob container of product images;
- `crm/contacts/page-NNNNN.json`: the Dataverse Web API pages of customer contacts;
- `manifest.json`: what was written, and how many bad rows were planted on purpose.
"""

import hashlib
import json
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from contoso_recs.sources.clickstream import RAW_FIELDS

SQL_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
CRM_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
VIEW_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.3fZ"
MANIFEST_FILE = "manifest.json"
# The shape of the local sources, recorded in the manifest; sources written under an earlier
# shape are written again rather than reused. 2: the transactional database holds promotions.
SOURCES_LAYOUT = 2
CONTACTS_ENTITY = "contacts"

TRANSACTIONS_DDL = """
CREATE TABLE products (
    product_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    department TEXT,
    category TEXT,
    brand TEXT,
    package_size TEXT,
    price REAL,
    introduced_at TEXT,
    discontinued INTEGER NOT NULL DEFAULT 0,
    modified_at TEXT NOT NULL
);
CREATE TABLE orders (
    order_id INTEGER PRIMARY KEY,
    customer_id INTEGER,
    store_id INTEGER,
    channel TEXT,
    ordered_at TEXT NOT NULL,
    modified_at TEXT NOT NULL
);
CREATE TABLE order_lines (
    order_id INTEGER NOT NULL,
    line_number INTEGER NOT NULL,
    product_id INTEGER,
    quantity INTEGER,
    amount REAL,
    modified_at TEXT NOT NULL,
    PRIMARY KEY (order_id, line_number)
);
CREATE TABLE promotions (
    week_start TEXT NOT NULL,
    product_id INTEGER NOT NULL,
    mailer_share REAL,
    display_share REAL,
    modified_at TEXT NOT NULL,
    PRIMARY KEY (week_start, product_id)
);
CREATE INDEX products_modified ON products(modified_at);
CREATE INDEX orders_modified ON orders(modified_at);
CREATE INDEX order_lines_modified ON order_lines(modified_at);
CREATE INDEX promotions_modified ON promotions(modified_at);
"""

PRODUCT_COLUMNS = (
    "product_id",
    "name",
    "department",
    "category",
    "brand",
    "package_size",
    "price",
    "introduced_at",
    "discontinued",
    "modified_at",
)
ORDER_COLUMNS = ("order_id", "customer_id", "store_id", "channel", "ordered_at", "modified_at")
ORDER_LINE_COLUMNS = (
    "order_id",
    "line_number",
    "product_id",
    "quantity",
    "amount",
    "modified_at",
)
PROMOTION_COLUMNS = ("week_start", "product_id", "mailer_share", "display_share", "modified_at")
# The product view fields the clickstream extract reads, in the order the app writes them.
PRODUCT_VIEW_COLUMNS = tuple(RAW_FIELDS)
CONTACT_COLUMNS = (
    "contactid",
    "contoso_customerid",
    "birthdate",
    "contoso_ageband",
    "contoso_incomeband",
    "contoso_householdsize",
    "address1_city",
    "address1_stateorprovince",
    "contoso_preferredcategories",
    "createdon",
    "modifiedon",
)

# Fixed namespace so that a customer's CRM contact id is the same on every run.
CONTACT_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://contoso.example/crm/contacts")


def sources_root(data_dir: Path) -> Path:
    """Folder holding the local stand-ins of all source systems."""
    return Path(data_dir) / "sources"


def transactions_db_path(data_dir: Path) -> Path:
    """SQLite file standing in for the transactional database (products, orders, order lines)."""
    return sources_root(data_dir) / "transactions.sqlite"


def clickstream_root(data_dir: Path) -> Path:
    """Folder standing in for the Blob container of product views."""
    return sources_root(data_dir) / "blob" / "clickstream"


def product_images_root(data_dir: Path) -> Path:
    """Folder standing in for the Blob container of product images."""
    return sources_root(data_dir) / "blob" / "product-images"


def crm_root(data_dir: Path) -> Path:
    """Folder standing in for the CRM Web API."""
    return sources_root(data_dir) / "crm"


def manifest_path(data_dir: Path) -> Path:
    """JSON file describing what was written into the local sources."""
    return sources_root(data_dir) / MANIFEST_FILE


def clickstream_hour_dir(root: Path, hour: datetime) -> Path:
    """Folder of the product views received in one UTC hour: `root/YYYY/MM/DD/HH`."""
    return Path(root) / f"{hour:%Y}" / f"{hour:%m}" / f"{hour:%d}" / f"{hour:%H}"


def clickstream_part_path(hour_dir: Path, part: int) -> Path:
    """One JSON-lines file of product views inside an hour folder."""
    return hour_dir / f"part-{part:04d}.jsonl"


def contacts_page_name(page: int) -> str:
    """File name of one page of CRM contacts, numbered from 1."""
    return f"page-{page:05d}.json"


def contact_id(customer_id: int) -> str:
    """The CRM contact id of a customer, the same on every run (a name-based UUID, version 5)."""
    return str(uuid.uuid5(CONTACT_ID_NAMESPACE, str(customer_id)))


def contact_ids(customer_ids: Iterable[int]) -> list[str]:
    """`contact_id` of many customers, computed straight from SHA-1 for speed."""
    namespace = CONTACT_ID_NAMESPACE.bytes
    ids = []
    for customer_id in customer_ids:
        raw = bytearray(hashlib.sha1(namespace + str(customer_id).encode()).digest()[:16])
        raw[6] = (raw[6] & 0x0F) | 0x50
        raw[8] = (raw[8] & 0x3F) | 0x80
        h = raw.hex()
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


def reset_sources(data_dir: Path) -> Path:
    """Remove everything under `<data_dir>/sources` and return the empty folder."""
    root = sources_root(data_dir)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    return root


def create_transactions_db(path: Path) -> sqlite3.Connection:
    """Create an empty transactional database at `path`, replacing any existing one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + "-journal"), path.with_name(path.name + "-wal")):
        stale.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(TRANSACTIONS_DDL)
    return conn


def start_bulk_load(conn: sqlite3.Connection) -> None:
    """Trade crash safety for speed while the database is being filled from scratch."""
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")


def finish_bulk_load(conn: sqlite3.Connection) -> None:
    """Restore the usual durability settings once the bulk load is done."""
    conn.commit()
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=FULL")


def insert_rows(
    conn: sqlite3.Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence]
) -> None:
    """Insert rows into a table in one transaction."""
    placeholders = ", ".join("?" for _ in columns)
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"
    with conn:
        conn.executemany(sql, rows)


def format_sql_timestamp(epoch_seconds: pl.Expr) -> pl.Expr:
    """Epoch seconds as the database's text timestamps, `YYYY-MM-DD HH:MM:SS` (UTC)."""
    return pl.from_epoch(epoch_seconds, time_unit="s").dt.strftime(SQL_TIMESTAMP_FORMAT)


def format_crm_timestamp(epoch_seconds: pl.Expr) -> pl.Expr:
    """Epoch seconds as CRM timestamps, `YYYY-MM-DDTHH:MM:SSZ` (UTC)."""
    return pl.from_epoch(epoch_seconds, time_unit="s").dt.strftime(CRM_TIMESTAMP_FORMAT)


def format_view_timestamp(epoch_millis: pl.Expr) -> pl.Expr:
    """Epoch milliseconds as product view timestamps, `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC)."""
    return pl.from_epoch(epoch_millis, time_unit="ms").dt.strftime(VIEW_TIMESTAMP_FORMAT)


def write_clickstream_hour(
    root: Path, hour: datetime, parts: Sequence[Sequence[str]], unfinished_part: int | None = None
) -> int:
    """Write the JSON lines of one hour as part files and return how many files were written.

    Every file ends with a newline except `unfinished_part`, whose last line was cut short the
    way a file caught while it was being written would be.
    """
    hour_dir = clickstream_hour_dir(root, hour)
    hour_dir.mkdir(parents=True, exist_ok=True)
    for number, lines in enumerate(parts):
        text = "\n".join(lines)
        if lines and number != unfinished_part:
            text += "\n"
        clickstream_part_path(hour_dir, number).write_text(text, encoding="utf-8")
    return len(parts)


def write_contact_pages(
    root: Path,
    contacts: pl.DataFrame,
    page_size: int,
    on_page: Callable[[int], None] | None = None,
) -> int:
    """Write CRM contacts as Dataverse-style pages linked by `@odata.nextLink`.

    `on_page` is called with the number of contacts of each page written.
    """
    folder = Path(root) / CONTACTS_ENTITY
    folder.mkdir(parents=True, exist_ok=True)
    n_pages = max(1, -(-contacts.height // page_size))
    context = json.dumps(f"$metadata#{CONTACTS_ENTITY}")
    for page in range(1, n_pages + 1):
        chunk = contacts.slice((page - 1) * page_size, page_size).select(CONTACT_COLUMNS)
        body = f'{{"@odata.context": {context}, "value": {chunk.write_json()}'
        if page < n_pages:
            body += f', "@odata.nextLink": "{contacts_page_name(page + 1)}"'
        (folder / contacts_page_name(page)).write_text(body + "}\n", encoding="utf-8")
        if on_page is not None:
            on_page(chunk.height)
    return n_pages


def write_product_image(root: Path, product_id: int, pixels: np.ndarray) -> None:
    """Write one product image (height x width x RGB, uint8) as a PNG file."""
    Image.fromarray(pixels).save(Path(root) / f"{product_id}.png", format="PNG")


def write_unreadable_product_image(root: Path, product_id: int) -> None:
    """Write a file named like a product image that holds no image at all."""
    (Path(root) / f"{product_id}.png").write_bytes(b"<html><body>503 Service Unavailable</body>")


def write_manifest(data_dir: Path, manifest: dict) -> Path:
    """Write `sources/manifest.json` with the sources' layout, keys in a stable order."""
    path = manifest_path(data_dir)
    manifest = {"layout": SOURCES_LAYOUT, **manifest}
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def read_manifest(data_dir: Path) -> dict:
    """Read `sources/manifest.json`."""
    return json.loads(manifest_path(data_dir).read_text(encoding="utf-8"))

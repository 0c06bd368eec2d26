"""Synthetic retail history with tastes a recommender can learn, written into the local sources.

Customers carry a hidden taste vector built from their demographics (age band, state, household
size, income) plus a personal part; products carry a vector near their category's. A customer
picks a category by taste, then a product inside it by taste and Zipf-like popularity. Orders mix
repeat purchases of a customer's staples with new, taste-driven products; product views come in
sessions that favour liked products, dwell longer on them, and precede online orders.

Everything is drawn from numpy generators seeded by `(seed, stream, chunk)`, so the same seed
gives the same rows on every machine, and the largest scale streams to disk chunk by chunk.
"""

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from contoso_recs.demo_data import layout

logger = logging.getLogger(__name__)

HISTORY_END = datetime(2026, 11, 30, tzinfo=UTC)
HISTORY_END_S = int(HISTORY_END.timestamp())
DAY_S = 86_400
HOUR_S = 3_600
YEAR_S = 365 * DAY_S
LATENT_DIM = 16
NEVER = np.iinfo(np.int64).max // 4

FIRST_CUSTOMER_ID = 10_001
FIRST_PRODUCT_ID = 100_001
FIRST_ORDER_ID = 1_000_001
UNKNOWN_PRODUCT_ID = 9_000_000
STAPLE_SLOTS = 8
PICK_CHUNK = 65_536
STAPLE_CHUNK = 100_000
VIEW_CHUNK_S = 6 * HOUR_S

CATEGORY_SHARPNESS = 4.0
PRODUCT_SHARPNESS = 5.0
CANDIDATES = 16
ZIPF_EXPONENT = 0.95
ANONYMOUS_SHARE = 0.15
WEEK_S = 7 * DAY_S
# The weekly mailer: the share of the catalogue it features, how much more a customer choosing in
# a product's category leans to it (times the share of stores featuring it), and how long before
# its week the plan is written.
MAILER_PRODUCT_SHARE = 0.02
MAILER_LIFT = 2.0
PLAN_LEAD_S = 7 * DAY_S
PROGRESS_EVERY_S = 5.0

# Seed streams: each part of the world draws from its own generator.
STREAM_CATALOGUE = 1
STREAM_CUSTOMERS = 2
STREAM_STAPLES = 3
STREAM_ORDERS = 4
STREAM_CLICKSTREAM = 5
STREAM_CRM = 6
STREAM_IMAGES = 7
STREAM_BAD_INPUT = 8
STREAM_PROMOTIONS = 9

CHANNELS = ("store", "web", "app")
AGE_BANDS = ("19-24", "25-34", "35-44", "45-54", "55-64", "65+")
AGE_SHARES = (0.09, 0.19, 0.22, 0.21, 0.16, 0.13)
AGE_RANGES = ((19, 24), (25, 34), (35, 44), (45, 54), (55, 64), (65, 89))
# Share of store, web and app orders by age band: younger customers order in the app more.
CHANNEL_MIX = (
    (0.45, 0.15, 0.40),
    (0.50, 0.18, 0.32),
    (0.58, 0.18, 0.24),
    (0.66, 0.18, 0.16),
    (0.76, 0.15, 0.09),
    (0.85, 0.12, 0.03),
)
INCOME_BANDS = (
    "Under 15K",
    "15-24K",
    "25-34K",
    "35-49K",
    "50-74K",
    "75-99K",
    "100-124K",
    "125-149K",
    "150-174K",
    "175-199K",
    "200-249K",
    "250K+",
)
INCOME_CENTRE_BY_AGE = (2.5, 3.8, 4.6, 4.9, 4.4, 3.2)
HOUSEHOLD_CENTRE_BY_AGE = (1.4, 2.3, 3.1, 2.8, 2.0, 1.6)
STATES = (
    ("WA", 0.07, ("Seattle", "Tacoma", "Spokane")),
    ("OR", 0.04, ("Portland", "Eugene")),
    ("CA", 0.17, ("Los Angeles", "San Diego", "San Jose", "Sacramento")),
    ("TX", 0.13, ("Houston", "Dallas", "Austin")),
    ("IL", 0.08, ("Chicago", "Naperville")),
    ("NY", 0.11, ("New York", "Buffalo", "Rochester")),
    ("FL", 0.11, ("Miami", "Orlando", "Tampa")),
    ("GA", 0.06, ("Atlanta", "Savannah")),
    ("CO", 0.05, ("Denver", "Boulder")),
    ("MA", 0.06, ("Boston", "Worcester")),
    ("OH", 0.07, ("Columbus", "Cleveland")),
    ("AZ", 0.05, ("Phoenix", "Tucson")),
)
# Share of the day's orders and product views in each UTC hour (stores on US time).
HOURLY_SHARE = np.array(
    [4, 3, 2, 1.5, 1, 1, 1, 1.5, 2, 3, 4, 5, 6, 6.5, 7, 7, 7, 7, 7, 7, 6.5, 6, 5.5, 5],
    dtype=np.float64,
)
HOURLY_SHARE /= HOURLY_SHARE.sum()

PACKAGE_SIZES = {
    "lb": ("1 LB", "2 LB", "3 LB", "5 LB"),
    "oz": ("6 OZ", "8 OZ", "12 OZ", "16 OZ", "24 OZ", "32 OZ"),
    "floz": ("12 FL OZ", "16 FL OZ", "32 FL OZ", "64 FL OZ", "128 FL OZ"),
    "ct": ("1 CT", "2 CT", "4 CT", "6 CT", "12 CT", "24 CT"),
    "each": (None,),
}
VARIANTS = ("", "", "", "Organic ", "Classic ", "Premium ", "Family Size ", "Light ", "Value ")
BRANDS = (
    "Contoso",
    "Contoso Basics",
    "Northwind",
    "Fabrikam",
    "Tailspin",
    "Litware",
    "Proseware",
    "Woodgrove",
    "Fourth Coffee",
    "Coho",
    "Lucerne",
    "Wingtip",
    "Adatum",
    "Alpine",
    "Trey",
    "Wide World",
)
# (department, category, typical price in USD, package size family, product kinds)
CATEGORY_TABLE = (
    ("Fresh Food", "Fruit", 3.5, "lb", "Apples|Bananas|Berries|Grapes|Citrus Mix|Melon"),
    ("Dairy & Eggs", "Milk", 3.2, "floz", "Whole Milk|Skim Milk|Oat Milk|Almond Milk"),
    ("Bakery", "Bread", 3.0, "oz", "Sourdough|Whole Wheat Loaf|Bagels|Baguette|Tortillas"),
    ("Pantry", "Pasta & Rice", 2.2, "oz", "Spaghetti|Penne|Basmati Rice|Noodles|Couscous"),
    ("Snacks", "Chips", 3.5, "oz", "Potato Chips|Tortilla Chips|Pretzels|Popcorn"),
    ("Beverages", "Coffee", 8.5, "oz", "Ground Coffee|Coffee Beans|Coffee Pods|Instant Coffee"),
    ("Frozen", "Frozen Meals", 5.5, "oz", "Pizza|Lasagna|Burritos|Dumplings"),
    ("Household", "Cleaning", 4.5, "floz", "All-Purpose Cleaner|Dish Soap|Bleach|Glass Cleaner"),
    ("Personal Care", "Hair Care", 6.0, "floz", "Shampoo|Conditioner|Hair Gel|Dry Shampoo"),
    ("Baby", "Diapers & Wipes", 14.0, "ct", "Diapers|Baby Wipes|Training Pants|Diaper Cream"),
    ("Pets", "Dog Supplies", 12.0, "lb", "Dry Dog Food|Wet Dog Food|Dog Treats|Chew Toy"),
    ("Home & Kitchen", "Cookware", 24.0, "each", "Frying Pan|Saucepan|Baking Tray|Knife Set"),
    ("Electronics", "Phone Accessories", 18.0, "each", "Phone Case|USB-C Cable|Charger|Earbuds"),
    ("Garden & Outdoor", "Garden", 9.0, "lb", "Potting Soil|Plant Food|Seeds|Garden Gloves"),
    ("Toys & Books", "Toys", 16.0, "each", "Building Blocks|Puzzle|Board Game|Plush Toy"),
    ("Health", "Vitamins", 11.0, "ct", "Multivitamin|Vitamin D|Fish Oil|Probiotic"),
    ("Fresh Food", "Vegetables", 2.5, "lb", "Carrots|Broccoli|Salad Mix|Tomatoes|Peppers"),
    ("Dairy & Eggs", "Cheese", 4.8, "oz", "Cheddar|Mozzarella|Parmesan|Brie|Cheese Slices"),
    ("Bakery", "Cakes & Pastries", 4.5, "ct", "Croissants|Muffins|Cheesecake|Donuts|Cookies"),
    ("Pantry", "Breakfast Cereal", 4.2, "oz", "Granola|Oats|Corn Flakes|Muesli|Bran Flakes"),
    ("Snacks", "Chocolate & Candy", 3.0, "oz", "Milk Chocolate|Dark Chocolate|Gummies|Mints"),
    ("Beverages", "Tea", 4.5, "ct", "Green Tea|Black Tea|Herbal Tea|Chai"),
    ("Frozen", "Ice Cream", 5.0, "floz", "Vanilla Ice Cream|Gelato|Sorbet|Ice Pops"),
    ("Household", "Laundry", 11.0, "floz", "Laundry Detergent|Fabric Softener|Stain Remover"),
    ("Personal Care", "Oral Care", 4.0, "each", "Toothpaste|Toothbrush|Mouthwash|Floss"),
    ("Baby", "Baby Food", 6.0, "oz", "Infant Formula|Baby Puree|Baby Snacks|Teething Biscuits"),
    ("Pets", "Cat Supplies", 10.0, "lb", "Dry Cat Food|Wet Cat Food|Cat Litter|Cat Treats"),
    ("Home & Kitchen", "Storage", 5.0, "ct", "Food Containers|Zip Bags|Foil|Cling Film"),
    ("Electronics", "Batteries & Bulbs", 8.0, "ct", "AA Batteries|AAA Batteries|LED Bulb"),
    ("Garden & Outdoor", "Grilling", 9.5, "each", "Charcoal|BBQ Sauce|Skewers|Grill Brush"),
    ("Toys & Books", "Books & Magazines", 12.0, "each", "Magazine|Cookbook|Novel|Puzzle Book"),
    ("Health", "Pain & Cold", 8.0, "ct", "Pain Reliever|Cough Syrup|Allergy Relief|Lozenges"),
    ("Fresh Food", "Meat & Poultry", 8.0, "lb", "Chicken Breast|Ground Beef|Pork Chops|Steak"),
    ("Dairy & Eggs", "Yogurt", 3.8, "oz", "Greek Yogurt|Fruit Yogurt|Drinking Yogurt|Skyr"),
    ("Pantry", "Canned Goods", 1.8, "oz", "Chopped Tomatoes|Chickpeas|Tuna|Soup|Baked Beans"),
    ("Snacks", "Nuts & Bars", 5.0, "oz", "Almonds|Trail Mix|Protein Bar|Granola Bar"),
    ("Beverages", "Soft Drinks", 4.0, "floz", "Cola|Lemonade|Sparkling Water|Energy Drink"),
    ("Frozen", "Frozen Vegetables", 2.8, "oz", "Peas|Mixed Vegetables|Spinach|Sweetcorn"),
    ("Household", "Paper Goods", 9.0, "ct", "Paper Towels|Toilet Paper|Tissues|Napkins"),
    ("Personal Care", "Skin Care", 9.0, "floz", "Moisturizer|Sunscreen|Face Wash|Body Lotion"),
    ("Home & Kitchen", "Home Decor", 15.0, "each", "Scented Candle|Picture Frame|Cushion|Vase"),
    ("Fresh Food", "Seafood", 11.0, "lb", "Salmon Fillet|Shrimp|Cod Fillet|Tuna Steak"),
    ("Dairy & Eggs", "Eggs & Butter", 4.2, "ct", "Free Range Eggs|Butter|Cream|Margarine"),
    ("Pantry", "Sauces & Condiments", 3.2, "oz", "Ketchup|Pasta Sauce|Mayonnaise|Salsa"),
    ("Pantry", "Baking", 3.5, "lb", "Flour|Sugar|Baking Mix|Chocolate Chips"),
    ("Beverages", "Juice", 4.2, "floz", "Orange Juice|Apple Juice|Smoothie|Cranberry Juice"),
    ("Beverages", "Beer & Wine", 12.0, "floz", "Lager|IPA|Red Wine|White Wine|Cider"),
    ("Personal Care", "Cosmetics", 10.0, "each", "Lipstick|Mascara|Foundation|Nail Polish"),
)


@dataclass(frozen=True)
class Scale:
    """Size of a synthetic world."""

    name: str
    customers: int
    products: int
    categories: int
    stores: int
    history_days: int
    clickstream_hours: int
    expected_orders: int
    # Mean lines drawn per order, before a product drawn twice in one order becomes one line.
    lines_per_order: float
    sessions_per_day: int
    views_per_session: float
    crm_page_size: int
    # Share of rows planted bad for each kind; None plants exactly one of each kind.
    bad_share: float | None


SCALES = {
    "tiny": Scale("tiny", 200, 120, 8, 3, 90, 48, 1_500, 6.5, 100, 10.0, 500, None),
    "demo": Scale("demo", 20_000, 3_000, 32, 25, 365, 672, 110_000, 7.5, 3_000, 12.0, 500, 1e-4),
    "full": Scale(
        "full", 2_000_000, 50_000, 48, 300, 730, 48, 2_500_000, 10.0, 150_000, 16.0, 5_000, 1e-4
    ),
}

BAD_INPUT_REASONS = {
    "product_views": (
        "malformed_json",
        "invalid_dwell_seconds",
        "duplicate",
        "unknown_product",
        "missing_customer_and_session",
    ),
    "order_lines": ("negative_quantity", "unknown_product", "invalid_quantity"),
    "orders": ("missing_customer_id",),
    "customers": ("missing_customer_id", "invalid_birthdate"),
    "product_images": ("unreadable_image",),
    "promotions": ("week_start_not_monday", "share_out_of_range"),
}


@dataclass
class Catalogue:
    """Products, kept grouped by category; arrays are indexed by product position."""

    product_ids: np.ndarray
    category: np.ndarray
    vectors: np.ndarray
    cum_popularity: np.ndarray
    category_start: np.ndarray
    category_end: np.ndarray
    category_mass_start: np.ndarray
    category_mass: np.ndarray
    category_vectors: np.ndarray
    category_fallback: np.ndarray
    introduced_at: np.ndarray
    discontinued_at: np.ndarray
    price_before: np.ndarray
    price_now: np.ndarray
    price_changed_at: np.ndarray
    categories: tuple[tuple, ...]
    # The weekly mailer: per product and week (from `first_week_s`, a Monday), the share of stores
    # whose mailer features the product (0: not in it).
    mailer: np.ndarray
    first_week_s: int

    def available(self, products: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Whether each product was on sale at the matching time."""
        return (self.introduced_at[products] <= at) & (self.discontinued_at[products] > at)

    def mailer_share(self, products: np.ndarray, at: np.ndarray) -> np.ndarray:
        """The share of stores whose mailer features each product in the week holding `at`."""
        week = np.clip((at - self.first_week_s) // WEEK_S, 0, self.mailer.shape[1] - 1)
        return self.mailer[products, week]

    def price_at(self, products: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Unit price of each product at the matching time."""
        changed = at >= self.price_changed_at[products]
        return np.where(changed, self.price_now[products], self.price_before[products])


@dataclass
class Customers:
    """Customers in order of sign-up; arrays are indexed by customer position."""

    customer_ids: np.ndarray
    created_at: np.ndarray
    tastes: np.ndarray
    activity: np.ndarray
    staples: np.ndarray
    staple_share: np.ndarray
    age_band: np.ndarray
    income_band: np.ndarray
    household_size: np.ndarray
    state: np.ndarray
    city: np.ndarray
    home_store: np.ndarray
    uses_ios: np.ndarray


@dataclass
class BadInputPlanter:
    """Decides how many bad rows of each kind go into each chunk, and keeps the tally."""

    share: float | None
    rng: np.random.Generator
    planted: dict[str, dict[str, int]] = field(
        default_factory=lambda: {table: {} for table in BAD_INPUT_REASONS}
    )

    def count(self, table: str, reason: str, n_rows: int, last_chunk: bool) -> int:
        """Bad rows of one kind to plant in a chunk of `n_rows` rows."""
        so_far = self.planted[table].get(reason, 0)
        if self.share is None:
            wanted = 1 if last_chunk and so_far == 0 else 0
        else:
            wanted = int(self.rng.binomial(n_rows, self.share))
            if last_chunk and so_far + wanted == 0:
                wanted = 1
        self.planted[table][reason] = so_far + wanted
        return wanted

    def counts(self, table: str, n_rows: int, last_chunk: bool) -> dict[str, int]:
        """Bad rows of every kind of a table to plant in a chunk."""
        return {
            reason: self.count(table, reason, n_rows, last_chunk)
            for reason in BAD_INPUT_REASONS[table]
        }

    def pick_rows(self, n_rows: int, counts: dict[str, int]) -> dict[str, np.ndarray]:
        """Distinct row positions for each kind, so that each bad row has exactly one fault."""
        total = sum(counts.values())
        if total > n_rows:
            raise ValueError(f"cannot plant {total} bad rows among {n_rows}")
        chosen = self.rng.choice(n_rows, size=total, replace=False)
        bounds = np.cumsum([0, *counts.values()])
        return {
            reason: np.sort(chosen[bounds[i] : bounds[i + 1]]) for i, reason in enumerate(counts)
        }


class Progress:
    """Logs rows written so far and the rate, at most every few seconds."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.rows = 0
        self.logged_rows = -1
        self.started = time.monotonic()
        self.last_logged = self.started

    def add(self, rows: int) -> None:
        """Count rows written and log when enough time has passed."""
        self.rows += rows
        now = time.monotonic()
        if now - self.last_logged >= PROGRESS_EVERY_S:
            self.last_logged = now
            self.log()

    def finish(self) -> None:
        """Log the final count, unless it was just logged."""
        if self.rows != self.logged_rows or self.rows == 0:
            self.log()

    def log(self) -> None:
        """Log rows so far and the rate."""
        self.logged_rows = self.rows
        elapsed = max(time.monotonic() - self.started, 1e-9)
        logger.info(
            "%s: %s rows so far (%s rows/s)",
            self.what,
            f"{self.rows:,}",
            f"{self.rows / elapsed:,.0f}",
        )


def rng_for(seed: int, stream: int, chunk: int = 0) -> np.random.Generator:
    """Generator for one part of the world, independent of every other part."""
    return np.random.default_rng([seed, stream, chunk])


def scrambled_hex_ids(prefix: str, counters: np.ndarray, key: int) -> pl.Series:
    """Unique, random-looking string ids from distinct counters.

    The counters go through the SplitMix64 finaliser, a bijection on 64 bits, so distinct
    counters always give distinct ids.
    """
    with np.errstate(over="ignore"):
        mixed = counters.astype(np.uint64) + np.uint64(key % 2**64)
        mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        mixed ^= mixed >> np.uint64(31)
    raw = pl.Series(mixed.astype(">u8").view("S8").ravel(), dtype=pl.Binary)
    return (prefix + raw.bin.encode("hex")).rename("id")


def to_datetime(epoch_s: int) -> datetime:
    """A UTC datetime from epoch seconds."""
    return datetime.fromtimestamp(epoch_s, tz=UTC)


def iso_utc(epoch_s: int) -> str:
    """Epoch seconds as `YYYY-MM-DDTHH:MM:SSZ`."""
    return to_datetime(epoch_s).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- products -------------------------------------------------------------------------------


def ordered_categories(n: int) -> tuple[tuple, ...]:
    """The first `n` categories of the table, which spread over departments."""
    if n > len(CATEGORY_TABLE):
        raise ValueError(f"at most {len(CATEGORY_TABLE)} categories are defined")
    return CATEGORY_TABLE[:n]


def build_catalogue(scale: Scale, seed: int) -> Catalogue:
    """Products with categories, taste vectors, popularity, prices and catalogue dates."""
    rng = rng_for(seed, STREAM_CATALOGUE)
    categories = ordered_categories(scale.categories)
    n, k = scale.products, scale.categories

    category = np.sort(rng.choice(k, size=n, p=rng.dirichlet(np.full(k, 4.0))))
    category[:k] = np.arange(k)
    category = np.sort(category)
    category_vectors = rng.normal(0, 1 / np.sqrt(LATENT_DIM), (k, LATENT_DIM))
    vectors = category_vectors[category] + rng.normal(0, 0.6 / np.sqrt(LATENT_DIM), (n, LATENT_DIM))

    popularity = 1.0 / rng.permutation(np.arange(1, n + 1)) ** ZIPF_EXPONENT
    cum = np.cumsum(popularity)
    start = np.searchsorted(category, np.arange(k), side="left")
    end = np.searchsorted(category, np.arange(k), side="right")
    mass_start = np.concatenate([[0.0], cum])[start]
    fallback = np.array([s + np.argmax(popularity[s:e]) for s, e in zip(start, end, strict=True)])

    introduced, discontinued = catalogue_dates(rng, scale, fallback)
    base_price = np.array([row[2] for row in categories])[category]
    price_before = shelf_price(base_price * rng.lognormal(0, 0.45, n))
    changed = rng.random(n) < 0.25
    change_from = np.maximum(introduced, HISTORY_END_S - scale.history_days * DAY_S)
    changed_at = np.where(
        changed,
        change_from + (rng.random(n) * (HISTORY_END_S - change_from)).astype(np.int64),
        NEVER,
    )
    price_now = np.where(
        changed, shelf_price(price_before * rng.normal(1.05, 0.08, n)), price_before
    )
    first_week_s, mailer = weekly_mailer(scale, seed)
    return Catalogue(
        product_ids=FIRST_PRODUCT_ID + rng.permutation(n).astype(np.int64),
        category=category.astype(np.int32),
        vectors=vectors.astype(np.float32),
        cum_popularity=cum,
        category_start=start,
        category_end=end,
        category_mass_start=mass_start,
        category_mass=cum[end - 1] - mass_start,
        category_vectors=category_vectors.astype(np.float32),
        category_fallback=fallback,
        introduced_at=introduced,
        discontinued_at=discontinued,
        price_before=price_before,
        price_now=price_now,
        price_changed_at=changed_at,
        categories=categories,
        mailer=mailer,
        first_week_s=first_week_s,
    )


def weekly_mailer(scale: Scale, seed: int) -> tuple[int, np.ndarray]:
    """The Monday of the first week of the history, and per product and week the share of stores
    whose mailer features the product: MAILER_PRODUCT_SHARE of the catalogue each week, from the
    history's first week to the week after it ends (the week the demo's email is for)."""
    rng = rng_for(seed, STREAM_PROMOTIONS)
    start = HISTORY_END_S - scale.history_days * DAY_S
    monday = datetime(1970, 1, 5, tzinfo=UTC).timestamp()  # a Monday
    first = int(monday + (start - monday) // WEEK_S * WEEK_S)
    weeks = (HISTORY_END_S - first) // WEEK_S + 1
    featured = max(1, round(MAILER_PRODUCT_SHARE * scale.products))
    mailer = np.zeros((scale.products, weeks), dtype=np.float32)
    for week in range(weeks):
        products = rng.choice(scale.products, size=featured, replace=False)
        mailer[products, week] = np.round(rng.uniform(0.2, 1.0, featured), 3)
    return first, mailer


def promotion_table(catalogue: Catalogue, seed: int) -> pl.DataFrame:
    """The `promotions` table: a row per week and featured product, with the share of stores
    whose mailer features it and the share that display it, written a week before the week."""
    rng = rng_for(seed, STREAM_PROMOTIONS, 1)
    products, weeks = np.nonzero(catalogue.mailer)
    week_start = catalogue.first_week_s + weeks.astype(np.int64) * WEEK_S
    return (
        pl.DataFrame(
            {
                "week_start": week_start,
                "product_id": catalogue.product_ids[products],
                "mailer_share": np.round(catalogue.mailer[products, weeks].astype(np.float64), 3),
                "display_share": np.round(rng.uniform(0.0, 0.6, len(products)), 3),
                "modified_at": week_start - PLAN_LEAD_S,
            }
        )
        .with_columns(
            pl.from_epoch("week_start").dt.strftime("%Y-%m-%d"),
            layout.format_sql_timestamp(pl.col("modified_at")),
        )
        .sort("week_start", "product_id")
    )


def plant_bad_promotions(promotions: pl.DataFrame, bad: dict[str, np.ndarray]) -> list[tuple]:
    """The promotion rows with the planted faults: a week that starts on a Tuesday, a share
    above 1."""
    rows = [list(row) for row in promotions.rows()]
    for i in bad["week_start_not_monday"]:
        monday = datetime.strptime(rows[i][0], "%Y-%m-%d")
        rows[i][0] = f"{monday + timedelta(days=1):%Y-%m-%d}"
    for i in bad["share_out_of_range"]:
        rows[i][2] = 1.5
    return [tuple(row) for row in rows]


def catalogue_dates(
    rng: np.random.Generator, scale: Scale, fallback: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """When each product was introduced and (for a few) discontinued, in epoch seconds."""
    n = scale.products
    start = HISTORY_END_S - scale.history_days * DAY_S
    span = HISTORY_END_S - start
    is_new = rng.random(n) < 0.15
    is_new[fallback] = False
    old_at = start - (rng.random(n) * 4 * YEAR_S).astype(np.int64)
    new_at = start + (rng.random(n) * (span - 7 * DAY_S)).astype(np.int64)
    introduced = np.where(is_new, new_at, old_at)
    is_dropped = (rng.random(n) < 0.03) & ~is_new
    is_dropped[fallback] = False
    dropped_at = start + ((0.2 + 0.8 * rng.random(n)) * span).astype(np.int64)
    return introduced, np.where(is_dropped, dropped_at, NEVER)


def shelf_price(raw: np.ndarray) -> np.ndarray:
    """Prices ending in 9 cents, never under 49 cents."""
    return np.round(np.maximum(np.floor(raw * 10) / 10 + 0.09, 0.49), 2)


def product_table(catalogue: Catalogue, seed: int) -> pl.DataFrame:
    """The `products` table as it stands at the end of the history."""
    rng = rng_for(seed, STREAM_CATALOGUE, 1)
    n = len(catalogue.product_ids)
    kinds = [row[4].split("|") for row in catalogue.categories]
    names, sizes = [], []
    kind_pick = rng.random(n)
    variant_pick = rng.integers(0, len(VARIANTS), n)
    size_pick = rng.random(n)
    brand = np.array(BRANDS, dtype=object)[rng.integers(0, len(BRANDS), n)]
    for i, cat in enumerate(catalogue.category):
        row = catalogue.categories[cat]
        options = PACKAGE_SIZES[row[3]]
        kind = kinds[cat][int(kind_pick[i] * len(kinds[cat]))]
        names.append(f"{brand[i]} {VARIANTS[variant_pick[i]]}{kind}")
        sizes.append(options[int(size_pick[i] * len(options))])
    end = HISTORY_END_S
    changed = np.where(catalogue.price_changed_at < end, catalogue.price_changed_at, 0)
    dropped = np.where(catalogue.discontinued_at < end, catalogue.discontinued_at, 0)
    modified = np.maximum.reduce([catalogue.introduced_at, changed, dropped])
    frame = pl.DataFrame(
        {
            "product_id": catalogue.product_ids,
            "name": names,
            "department": [catalogue.categories[c][0] for c in catalogue.category],
            "category": [catalogue.categories[c][1] for c in catalogue.category],
            "brand": brand.tolist(),
            "package_size": sizes,
            "price": np.where(
                catalogue.price_changed_at < end, catalogue.price_now, catalogue.price_before
            ),
            "introduced_at": catalogue.introduced_at,
            "discontinued": (catalogue.discontinued_at < end).astype(np.int64),
            "modified_at": modified,
        },
        strict=False,
    )
    return frame.with_columns(
        layout.format_sql_timestamp(pl.col("introduced_at")),
        layout.format_sql_timestamp(pl.col("modified_at")),
    ).sort("product_id")


def product_image_pixels(
    catalogue: Catalogue, positions: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """32x32 pictures whose colours follow the category, shaded by the product, with noise."""
    n_categories = len(catalogue.categories)
    hue = (np.arange(n_categories) * 0.61803398875) % 1.0
    cat = catalogue.category[positions]
    vec = catalogue.vectors[positions]
    base = hsv_to_rgb(hue[cat], 0.55 + 0.1 * np.tanh(vec[:, 0]), 0.75 + 0.15 * np.tanh(vec[:, 1]))
    accent = hsv_to_rgb(
        (hue[cat] + 0.5) % 1.0, np.full(len(cat), 0.6), 0.5 + 0.2 * np.tanh(vec[:, 2])
    )
    yy, xx = np.mgrid[0:32, 0:32]
    radius = 6 + 4 * (1 + np.tanh(vec[:, 3]))
    radius = radius[:, None, None]
    round_shape = (yy - 16) ** 2 + (xx - 16) ** 2 < radius**2
    square_shape = (np.abs(yy - 16) < radius * 0.8) & (np.abs(xx - 16) < radius * 0.8)
    inside = np.where((cat % 2 == 0)[:, None, None], round_shape, square_shape)
    pixels = np.where(inside[..., None], accent[:, None, None, :], base[:, None, None, :])
    pixels = pixels * 255 + rng.normal(0, 8, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Colours from hue, saturation and value in [0, 1], as an (n, 3) array in [0, 1]."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack(
        [
            np.stack([v, t, p], 1),
            np.stack([q, v, p], 1),
            np.stack([p, v, t], 1),
            np.stack([p, q, v], 1),
            np.stack([t, p, v], 1),
            np.stack([v, p, q], 1),
        ]
    )
    return table[i, np.arange(len(h))]


def write_product_images(
    data_dir: Path, catalogue: Catalogue, seed: int, planter: BadInputPlanter
) -> int:
    """One PNG per product under the product-images container, a few of them unreadable."""
    root = layout.product_images_root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = rng_for(seed, STREAM_IMAGES)
    n = len(catalogue.product_ids)
    bad = planter.pick_rows(n, planter.counts("product_images", n, last_chunk=True))
    unreadable = set(bad["unreadable_image"].tolist())
    progress = Progress("product images")
    for start in range(0, n, 1024):
        positions = np.arange(start, min(start + 1024, n))
        progress.add(len(positions))
        pixels = product_image_pixels(catalogue, positions, rng)
        for position, picture in zip(positions, pixels, strict=True):
            product_id = int(catalogue.product_ids[position])
            if position in unreadable:
                layout.write_unreadable_product_image(root, product_id)
            else:
                layout.write_product_image(root, product_id, picture)
    progress.finish()
    return n


# --- customers ------------------------------------------------------------------------------


def build_customers(scale: Scale, seed: int, catalogue: Catalogue) -> Customers:
    """Customers with demographics, a taste shaped by them, activity, staples and a store."""
    rng = rng_for(seed, STREAM_CUSTOMERS)
    n = scale.customers
    start = HISTORY_END_S - scale.history_days * DAY_S
    existing = rng.random(n) < 0.7
    before = start - (rng.random(n) * 3 * YEAR_S).astype(np.int64)
    during = start + (rng.random(n) * (HISTORY_END_S - start)).astype(np.int64)
    created = np.sort(np.where(existing, before, during))

    age = rng.choice(len(AGE_BANDS), size=n, p=AGE_SHARES)
    income = np.clip(np.rint(rng.normal(np.take(INCOME_CENTRE_BY_AGE, age), 2.0)), 0, 11)
    household = np.clip(np.rint(rng.normal(np.take(HOUSEHOLD_CENTRE_BY_AGE, age), 1.0)), 1, 5)
    state_share = np.array([row[1] for row in STATES])
    state = rng.choice(len(STATES), size=n, p=state_share / state_share.sum())
    n_cities = np.array([len(row[2]) for row in STATES])
    city = (rng.random(n) * n_cities[state]).astype(np.int64)
    tastes = demographic_tastes(rng, age, income.astype(int), household.astype(int), state)

    exposure_days = (HISTORY_END_S - np.maximum(created, start)) / DAY_S
    raw_activity = rng.gamma(0.7, 1.0, n)
    activity = raw_activity * scale.expected_orders / float(np.sum(raw_activity * exposure_days))
    customers = Customers(
        customer_ids=FIRST_CUSTOMER_ID + np.arange(n, dtype=np.int64),
        created_at=created,
        tastes=tastes,
        activity=activity,
        staples=np.empty((0, STAPLE_SLOTS), dtype=np.int64),
        staple_share=rng.beta(4.0, 5.0, n),
        age_band=age,
        income_band=income.astype(np.int64),
        household_size=household.astype(np.int64),
        state=state,
        city=city,
        home_store=home_stores(rng, scale, state, state_share),
        uses_ios=rng.random(n) < 0.55,
    )
    customers.staples = pick_staples(scale, seed, catalogue, customers)
    return customers


def demographic_tastes(
    rng: np.random.Generator,
    age: np.ndarray,
    income: np.ndarray,
    household: np.ndarray,
    state: np.ndarray,
) -> np.ndarray:
    """Taste vectors: one part shared by customers of the same demographics, one personal."""
    d = LATENT_DIM
    scale = 1 / np.sqrt(d)
    by_age = rng.normal(0, 0.8 * scale, (len(AGE_BANDS), d))
    by_state = rng.normal(0, 0.6 * scale, (len(STATES), d))
    low_income, high_income = rng.normal(0, 0.5 * scale, (2, d))
    small_home, large_home = rng.normal(0, 0.6 * scale, (2, d))
    income_share = (income / (len(INCOME_BANDS) - 1))[:, None]
    household_share = ((household - 1) / 4)[:, None]
    tastes = (
        by_age[age]
        + by_state[state]
        + low_income
        + income_share * (high_income - low_income)
        + small_home
        + household_share * (large_home - small_home)
        + rng.normal(0, scale, (len(age), d))
    )
    return tastes.astype(np.float32)


def home_stores(
    rng: np.random.Generator, scale: Scale, state: np.ndarray, state_share: np.ndarray
) -> np.ndarray:
    """Each customer's usual store: one in their state, or any store if their state has none."""
    store_state = np.sort(
        rng.choice(len(STATES), size=scale.stores, p=state_share / state_share.sum())
    )
    first = np.searchsorted(store_state, np.arange(len(STATES)), side="left")
    count = np.searchsorted(store_state, np.arange(len(STATES)), side="right") - first
    u = rng.random(len(state))
    local = first[state] + (u * count[state]).astype(np.int64)
    anywhere = (u * scale.stores).astype(np.int64)
    return np.where(count[state] > 0, local, anywhere) + 1


def pick_staples(scale: Scale, seed: int, catalogue: Catalogue, customers: Customers) -> np.ndarray:
    """The products each customer buys again and again, chosen by taste when they sign up."""
    rng = rng_for(seed, STREAM_STAPLES)
    start = HISTORY_END_S - scale.history_days * DAY_S
    n = len(customers.customer_ids)
    staples = np.empty((n, STAPLE_SLOTS), dtype=np.int64)
    progress = Progress("customers given staple products")
    for lo in range(0, n, STAPLE_CHUNK):
        who = np.repeat(np.arange(lo, min(lo + STAPLE_CHUNK, n)), STAPLE_SLOTS)
        at = np.maximum(customers.created_at[who], start)
        picked = pick_products(rng, catalogue, customers.tastes, who, at)
        staples[lo : lo + STAPLE_CHUNK] = picked.reshape(-1, STAPLE_SLOTS)
        progress.add(len(who) // STAPLE_SLOTS)
    progress.finish()
    return staples


# --- choosing products by taste -------------------------------------------------------------


def pick_products(
    rng: np.random.Generator,
    catalogue: Catalogue,
    tastes: np.ndarray,
    who: np.ndarray,
    at: np.ndarray,
) -> np.ndarray:
    """One product position per (taste row, time): a category by taste, then a product in it.

    Inside the category, candidates are drawn by popularity and the one the taste likes best
    (with Gumbel noise) is taken, so choices follow popularity times exp(taste affinity). Only
    products on sale at the time are chosen.
    """
    chosen = np.empty(len(who), dtype=np.int64)
    for lo in range(0, len(who), PICK_CHUNK):
        hi = min(lo + PICK_CHUNK, len(who))
        chosen[lo:hi] = pick_chunk(rng, catalogue, tastes[who[lo:hi]], at[lo:hi])
    return chosen


def pick_chunk(
    rng: np.random.Generator, catalogue: Catalogue, taste: np.ndarray, at: np.ndarray
) -> np.ndarray:
    """`pick_products` for one chunk of rows."""
    logits = CATEGORY_SHARPNESS * (taste @ catalogue.category_vectors.T)
    logits += np.log(catalogue.category_mass)
    weights = np.cumsum(np.exp(logits - logits.max(axis=1, keepdims=True)), axis=1)
    threshold = rng.random((len(at), 1)) * weights[:, -1:]
    category = np.minimum((weights < threshold).sum(axis=1), len(catalogue.category_mass) - 1)

    draws = rng.random((len(at), CANDIDATES))
    mass = (
        catalogue.category_mass_start[category][:, None]
        + draws * catalogue.category_mass[category][:, None]
    )
    candidates = np.searchsorted(catalogue.cum_popularity, mass, side="right")
    candidates = np.clip(
        candidates,
        catalogue.category_start[category][:, None],
        catalogue.category_end[category][:, None] - 1,
    )

    affinity = np.einsum("nd,ncd->nc", taste, catalogue.vectors[candidates])
    score = PRODUCT_SHARPNESS * affinity + rng.gumbel(size=affinity.shape)
    score += MAILER_LIFT * catalogue.mailer_share(candidates, at[:, None])
    on_sale = catalogue.available(candidates, at[:, None])
    best = np.argmax(np.where(on_sale, score, -np.inf), axis=1)
    chosen = candidates[np.arange(len(at)), best]
    none_on_sale = ~on_sale.any(axis=1)
    chosen[none_on_sale] = catalogue.category_fallback[category[none_on_sale]]
    return chosen


def taste_affinity(
    catalogue: Catalogue, tastes: np.ndarray, who: np.ndarray, products: np.ndarray
) -> np.ndarray:
    """How much each customer likes each matching product (taste · product vector)."""
    return np.einsum("nd,nd->n", tastes[who], catalogue.vectors[products])


# --- orders and order lines -----------------------------------------------------------------


@dataclass
class OrderChunk:
    """Orders placed in one stretch of time, with their lines (positions, not ids)."""

    orders: pl.DataFrame
    lines: pl.DataFrame


def time_chunks(start: int, end: int, step: int) -> Iterator[tuple[int, int, int]]:
    """(index, chunk start, chunk end) covering [start, end) in steps, in epoch seconds."""
    for index, lo in enumerate(range(start, end, step)):
        yield index, lo, min(lo + step, end)


def draw_orders(
    rng: np.random.Generator, customers: Customers, scale: Scale, lo: int, hi: int
) -> pl.DataFrame:
    """Orders placed in [lo, hi), sorted by time: who, when, through which channel and store."""
    alive_from = np.maximum(customers.created_at, lo)
    exposure_days = np.clip(hi - alive_from, 0, None) / DAY_S
    who = np.repeat(np.arange(len(alive_from)), rng.poisson(customers.activity * exposure_days))
    at = order_times(rng, alive_from[who], hi)
    order = np.lexsort((who, at))
    who, at = who[order], at[order]

    mix = np.cumsum(np.array(CHANNEL_MIX)[customers.age_band[who]], axis=1)
    channel = (rng.random(len(who))[:, None] > mix[:, :2]).sum(axis=1)
    walk_in = rng.integers(1, scale.stores + 1, len(who))
    store = np.where(rng.random(len(who)) < 0.85, customers.home_store[who], walk_in)
    return pl.DataFrame(
        {
            "customer": who,
            "customer_id": customers.customer_ids[who],
            "store_id": np.where(channel == 0, store, -1),
            "channel": np.array(CHANNELS)[channel],
            "ordered_at": at,
            "modified_at": at + rng.integers(1, 60, len(who)),
        }
    ).with_columns(pl.col("store_id").replace(-1, None))


def order_times(rng: np.random.Generator, alive_from: np.ndarray, hi: int) -> np.ndarray:
    """Order times in [alive_from, hi), following the hour-of-day pattern of the shops."""
    raw = alive_from + (rng.random(len(alive_from)) * (hi - alive_from)).astype(np.int64)
    hour = rng.choice(24, size=len(raw), p=HOURLY_SHARE)
    shaped = raw // DAY_S * DAY_S + hour * HOUR_S + rng.integers(0, HOUR_S, len(raw))
    return np.where((shaped >= alive_from) & (shaped < hi), shaped, raw)


def draw_order_lines(
    rng: np.random.Generator,
    scale: Scale,
    catalogue: Catalogue,
    customers: Customers,
    orders: pl.DataFrame,
) -> pl.DataFrame:
    """Order lines: repeat purchases of staples and new products chosen by taste."""
    who = orders["customer"].to_numpy()
    at = orders["ordered_at"].to_numpy()
    size = 0.5 + 0.5 * customers.household_size[who] / 2.4
    n_lines = 1 + rng.poisson((scale.lines_per_order - 1) * size)
    line_order = np.repeat(np.arange(len(who)), n_lines)
    line_who, line_at = who[line_order], at[line_order]

    slot_weights = 1 / np.arange(1, STAPLE_SLOTS + 1)
    slot = rng.choice(STAPLE_SLOTS, size=len(line_order), p=slot_weights / slot_weights.sum())
    product = customers.staples[line_who, slot]
    is_staple = rng.random(len(line_order)) < customers.staple_share[line_who]
    fresh = ~is_staple | ~catalogue.available(product, line_at)
    product[fresh] = pick_products(
        rng, catalogue, customers.tastes, line_who[fresh], line_at[fresh]
    )

    quantity = 1 + rng.poisson(np.where(fresh, 0.2, 0.5))
    discount = np.where(
        rng.random(len(product)) < 0.15, rng.choice([0.1, 0.2, 0.25, 0.3], len(product)), 0.0
    )
    amount = np.round(quantity * catalogue.price_at(product, line_at) * (1 - discount), 2)
    lines = pl.DataFrame(
        {"order": line_order, "product": product, "quantity": quantity, "amount": amount}
    )
    lines = lines.unique(subset=["order", "product"], keep="first", maintain_order=True)
    return lines.with_columns(line_number=pl.int_range(1, pl.len() + 1).over("order"))


def draw_order_chunk(
    rng: np.random.Generator,
    scale: Scale,
    catalogue: Catalogue,
    customers: Customers,
    window: tuple[int, int],
    first_order_id: int,
) -> OrderChunk:
    """Orders and order lines placed in a time window, with ids and modification times."""
    orders = draw_orders(rng, customers, scale, *window)
    orders = orders.with_columns(
        order_id=pl.int_range(first_order_id, first_order_id + pl.len(), dtype=pl.Int64)
    )
    lines = draw_order_lines(rng, scale, catalogue, customers, orders)
    order = lines["order"].to_numpy()
    lines = lines.with_columns(
        order_id=pl.Series(orders["order_id"].to_numpy()[order]),
        product_id=pl.Series(catalogue.product_ids[lines["product"].to_numpy()]),
        modified_at=pl.Series(orders["modified_at"].to_numpy()[order]),
    )
    return OrderChunk(orders=orders, lines=lines)


def plant_bad_orders(orders: pl.DataFrame, bad: dict[str, np.ndarray]) -> pl.DataFrame:
    """Orders whose customer id went missing."""
    missing = pl.int_range(pl.len()).is_in(bad["missing_customer_id"].tolist())
    return orders.with_columns(
        customer_id=pl.when(missing).then(None).otherwise(pl.col("customer_id"))
    )


def plant_bad_lines(
    lines: pl.DataFrame, bad: dict[str, np.ndarray], rng: np.random.Generator
) -> list[tuple]:
    """Order line rows ready for the database, with negative, unknown and invalid values."""
    row = pl.int_range(pl.len())
    negative = row.is_in(bad["negative_quantity"].tolist())
    unknown = row.is_in(bad["unknown_product"].tolist())
    unknown_ids = UNKNOWN_PRODUCT_ID + rng.integers(0, 100_000, lines.height)
    lines = lines.with_columns(
        product_id=pl.when(unknown).then(pl.Series(unknown_ids)).otherwise(pl.col("product_id")),
        quantity=pl.when(negative).then(-pl.col("quantity")).otherwise(pl.col("quantity")),
        amount=pl.when(negative).then(-pl.col("amount")).otherwise(pl.col("amount")),
    )
    rows = lines.select(
        "order_id",
        "line_number",
        "product_id",
        "quantity",
        "amount",
        layout.format_sql_timestamp(pl.col("modified_at")),
    ).rows()
    for i in bad["invalid_quantity"]:
        rows[i] = (*rows[i][:3], "two", *rows[i][4:])
    return rows


def write_order_chunk(
    conn, chunk: OrderChunk, planter: BadInputPlanter, last_chunk: bool
) -> tuple[int, int]:
    """Write one chunk of orders and order lines, planting bad rows; returns rows written."""
    orders, lines = chunk.orders, chunk.lines
    bad_orders = planter.pick_rows(
        orders.height, planter.counts("orders", orders.height, last_chunk)
    )
    bad_lines = planter.pick_rows(
        lines.height, planter.counts("order_lines", lines.height, last_chunk)
    )
    order_rows = plant_bad_orders(orders, bad_orders).select(
        "order_id",
        "customer_id",
        "store_id",
        "channel",
        layout.format_sql_timestamp(pl.col("ordered_at")),
        layout.format_sql_timestamp(pl.col("modified_at")),
    )
    layout.insert_rows(conn, "orders", layout.ORDER_COLUMNS, order_rows.rows())
    line_rows = plant_bad_lines(lines, bad_lines, planter.rng)
    layout.insert_rows(conn, "order_lines", layout.ORDER_LINE_COLUMNS, line_rows)
    return orders.height, lines.height


def write_transactions(
    data_dir: Path,
    scale: Scale,
    seed: int,
    catalogue: Catalogue,
    customers: Customers,
    planter: BadInputPlanter,
) -> tuple[dict[str, int], list[OrderChunk]]:
    """Fill the transactional database; returns row counts and the online orders of the
    clickstream window (their product views are written later)."""
    conn = layout.create_transactions_db(layout.transactions_db_path(data_dir))
    layout.start_bulk_load(conn)
    products = product_table(catalogue, seed)
    layout.insert_rows(conn, "products", layout.PRODUCT_COLUMNS, products.rows())
    promotions = promotion_table(catalogue, seed)
    bad = planter.pick_rows(
        promotions.height, planter.counts("promotions", promotions.height, last_chunk=True)
    )
    promotion_rows = plant_bad_promotions(promotions, bad)
    layout.insert_rows(conn, "promotions", layout.PROMOTION_COLUMNS, promotion_rows)

    start = HISTORY_END_S - scale.history_days * DAY_S
    click_start = HISTORY_END_S - scale.clickstream_hours * HOUR_S
    chunks = list(time_chunks(start, HISTORY_END_S, 7 * DAY_S))
    progress = Progress("order lines")
    next_order_id, n_orders, n_lines, online = FIRST_ORDER_ID, 0, 0, []
    for index, lo, hi in chunks:
        rng = rng_for(seed, STREAM_ORDERS, index)
        chunk = draw_order_chunk(rng, scale, catalogue, customers, (lo, hi), next_order_id)
        written = write_order_chunk(conn, chunk, planter, last_chunk=index == len(chunks) - 1)
        next_order_id += written[0]
        n_orders, n_lines = n_orders + written[0], n_lines + written[1]
        progress.add(written[1])
        if hi > click_start:
            online.append(online_orders(chunk, click_start))
    progress.finish()
    layout.finish_bulk_load(conn)
    conn.close()
    counts = {
        "products": products.height,
        "orders": n_orders,
        "order_lines": n_lines,
        "promotions": promotions.height,
    }
    return counts, online


def online_orders(chunk: OrderChunk, since: int) -> OrderChunk:
    """The web and app orders of a chunk placed at or after `since`, with their lines."""
    orders = chunk.orders.filter((pl.col("ordered_at") >= since) & (pl.col("channel") != "store"))
    lines = chunk.lines.filter(pl.col("order_id").is_in(orders["order_id"].implode()))
    return OrderChunk(orders=orders, lines=lines)


# --- product views --------------------------------------------------------------------------


def session_ids(first: int, n: int, seed: int) -> pl.Series:
    """Session ids for `n` new sessions numbered from `first`."""
    return scrambled_hex_ids("s-", np.arange(first, first + n), key=seed * 7919 + 1)


def event_ids(first: int, n: int, seed: int) -> pl.Series:
    """Product view event ids for `n` new events numbered from `first`."""
    return scrambled_hex_ids("pv-", np.arange(first, first + n), key=seed * 104_729 + 2)


def dwell_seconds(rng: np.random.Generator, affinity: np.ndarray) -> np.ndarray:
    """Seconds spent on a product page: longer for products the customer likes."""
    raw = np.exp(np.log(10.0) + 2.0 * affinity + rng.normal(0, 0.6, len(affinity)))
    return np.round(np.clip(raw, 0.5, 900.0), 1)


def session_offsets_ms(steps: np.ndarray, session: np.ndarray) -> np.ndarray:
    """Milliseconds from the start of each view's session to the view (sessions contiguous)."""
    ends = np.cumsum(steps)
    first = np.searchsorted(session, session, side="left")
    return np.rint((ends - steps - (ends[first] - steps[first])) * 1000).astype(np.int64)


def session_devices(
    rng: np.random.Generator, customers: Customers, taste_of: np.ndarray, anonymous: np.ndarray
) -> np.ndarray:
    """Device of each session: the web, or the customer's phone."""
    on_web = rng.random(len(taste_of)) < np.where(anonymous, 0.5, 0.3)
    phone = np.where(customers.uses_ios[taste_of], "ios", "android")
    return np.where(on_web, "web", phone)


def browsing_sessions(
    rng: np.random.Generator, scale: Scale, customers: Customers, window: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Sessions starting in a window: start time, customer (or -1), whose taste, device."""
    hours = np.arange(window[0], window[1], HOUR_S)
    per_hour = np.maximum(
        1, rng.poisson(scale.sessions_per_day * HOURLY_SHARE[hours // HOUR_S % 24])
    )
    start_ms = np.repeat(hours, per_hour) * 1000 + rng.integers(0, HOUR_S * 1000, per_hour.sum())
    n_alive = np.searchsorted(customers.created_at, start_ms // 1000, side="right")
    weights = np.cumsum(customers.activity + 0.3 * customers.activity.mean())
    draw = rng.random(len(start_ms)) * weights[np.maximum(n_alive, 1) - 1]
    who = np.minimum(np.searchsorted(weights, draw, side="right"), np.maximum(n_alive, 1) - 1)
    anonymous = (rng.random(len(start_ms)) < ANONYMOUS_SHARE) | (n_alive == 0)
    # An anonymous shopper is someone who did not sign in: any customer's taste will do.
    taste_of = np.where(anonymous, rng.integers(0, len(customers.created_at), len(who)), who)
    return {
        "start_ms": start_ms,
        "customer": np.where(anonymous, -1, who),
        "taste_of": taste_of,
        "device": session_devices(rng, customers, taste_of, anonymous),
        "n_views": rng.geometric(1 / scale.views_per_session, len(start_ms)),
    }


def browsing_views(
    rng: np.random.Generator,
    catalogue: Catalogue,
    customers: Customers,
    sessions: dict[str, np.ndarray],
    first_session: int,
    seed: int,
) -> pl.DataFrame:
    """Product views of browsing sessions: liked products are viewed more and for longer."""
    session = np.repeat(np.arange(len(sessions["start_ms"])), sessions["n_views"])
    taste_of = sessions["taste_of"][session]
    at = sessions["start_ms"][session] // 1000
    product = pick_products(rng, catalogue, customers.tastes, taste_of, at)
    dwell = dwell_seconds(rng, taste_affinity(catalogue, customers.tastes, taste_of, product))
    steps = dwell + rng.exponential(5.0, len(dwell))
    return view_frame(
        customers,
        customer=sessions["customer"][session],
        session_id=session_ids(first_session, len(sessions["start_ms"]), seed)[session],
        product=product,
        viewed_ms=sessions["start_ms"][session] + session_offsets_ms(steps, session),
        dwell=dwell,
        device=sessions["device"][session],
    )


def purchase_views(
    rng: np.random.Generator,
    catalogue: Catalogue,
    customers: Customers,
    online: OrderChunk,
    first_session: int,
    seed: int,
) -> pl.DataFrame:
    """Views of an online order's session: a little browsing, then each product bought."""
    orders = online.orders
    n = orders.height
    who = orders["customer"].to_numpy()
    order_pos = {order_id: i for i, order_id in enumerate(orders["order_id"].to_list())}
    bought_order = np.array(
        [order_pos[o] for o in online.lines["order_id"].to_list()], dtype=np.int64
    )
    extra = rng.poisson(2.0, n)
    extra_order = np.repeat(np.arange(n), extra)
    extra_product = pick_products(
        rng,
        catalogue,
        customers.tastes,
        who[extra_order],
        orders["ordered_at"].to_numpy()[extra_order],
    )
    session = np.concatenate([extra_order, bought_order])
    product = np.concatenate([extra_product, online.lines["product"].to_numpy()])
    bought = np.concatenate([np.zeros(len(extra_order)), np.ones(len(bought_order))])
    order = np.lexsort((bought, session))
    session, product, bought = session[order], product[order], bought[order]

    affinity = taste_affinity(catalogue, customers.tastes, who[session], product)
    dwell = dwell_seconds(rng, affinity + 0.5 * bought)
    steps = dwell + rng.exponential(5.0, len(dwell))
    total = np.bincount(session, weights=steps, minlength=n)
    end_ms = (
        orders["ordered_at"].to_numpy() * 1000 - 15_000 - np.rint(total * 1000).astype(np.int64)
    )
    device = np.where(
        orders["channel"].to_numpy() == "web",
        "web",
        np.where(customers.uses_ios[who], "ios", "android"),
    )
    return view_frame(
        customers,
        customer=who[session],
        session_id=session_ids(first_session, n, seed)[session],
        product=product,
        viewed_ms=end_ms[session] + session_offsets_ms(steps, session),
        dwell=dwell,
        device=device[session],
    )


def view_frame(customers: Customers, **columns: np.ndarray | pl.Series) -> pl.DataFrame:
    """Product views with customer ids (null when anonymous) in place of positions."""
    customer = columns.pop("customer")
    customer_id = np.where(customer >= 0, customers.customer_ids[np.maximum(customer, 0)], -1)
    frame = pl.DataFrame({"customer_id": customer_id, **columns})
    return frame.with_columns(pl.col("customer_id").replace(-1, None))


@dataclass
class ViewTally:
    """Product view lines, files and hour folders written so far, and ids handed out."""

    lines: int = 0
    files: int = 0
    hours: int = 0
    next_event: int = 0
    next_session: int = 0


def encode_views(views: pl.DataFrame, first_event: int, seed: int) -> pl.DataFrame:
    """One JSON line per product view, in the clickstream's field order."""
    return views.with_columns(
        event_id=event_ids(first_event, views.height, seed),
        event_type=pl.lit("product_view"),
        viewed_at=layout.format_view_timestamp(pl.col("viewed_ms")),
        dwell_seconds=pl.col("dwell"),
    ).select(
        pl.col("viewed_ms"),
        pl.struct(layout.PRODUCT_VIEW_COLUMNS).struct.json_encode().alias("line"),
    )


def plant_bad_views(
    views: pl.DataFrame, bad: dict[str, np.ndarray], rng: np.random.Generator
) -> pl.DataFrame:
    """Views whose product is unknown, or that lost both customer and session."""
    row = pl.int_range(pl.len())
    unknown = row.is_in(bad["unknown_product"].tolist())
    orphan = row.is_in(bad["missing_customer_and_session"].tolist())
    unknown_ids = pl.Series(UNKNOWN_PRODUCT_ID + rng.integers(0, 100_000, views.height))
    return views.with_columns(
        product_id=pl.when(unknown).then(unknown_ids).otherwise(pl.col("product_id")),
        customer_id=pl.when(orphan).then(None).otherwise(pl.col("customer_id")),
        session_id=pl.when(orphan).then(None).otherwise(pl.col("session_id")),
    )


def plant_bad_lines_of_views(
    lines: pl.DataFrame, bad: dict[str, np.ndarray], rng: np.random.Generator
) -> pl.DataFrame:
    """Lines with a text dwell time, cut-off JSON, and verbatim repeats elsewhere in the hour."""
    row = pl.int_range(pl.len())
    wrong_type = row.is_in(bad["invalid_dwell_seconds"].tolist())
    broken = row.is_in(bad["malformed_json"].tolist())
    lines = lines.with_columns(
        line=pl.when(wrong_type)
        .then(pl.col("line").str.replace(r'"dwell_seconds":[^,}]*', '"dwell_seconds":"abc"'))
        .when(broken)
        .then(pl.col("line").str.slice(0, pl.col("line").str.len_chars() // 2))
        .otherwise(pl.col("line")),
        sort_key=pl.col("viewed_ms") * 4,
    )
    repeated = lines[bad["duplicate"].tolist()]
    hour_ms = repeated["viewed_ms"] // (HOUR_S * 1000) * (HOUR_S * 1000)
    elsewhere = hour_ms + rng.integers(0, HOUR_S * 1000, repeated.height)
    repeated = repeated.with_columns(sort_key=pl.Series(elsewhere * 4 + 1))
    return pl.concat([lines, repeated]).sort("sort_key", maintain_order=True)


def write_view_hours(
    root: Path,
    lines: pl.DataFrame,
    rng: np.random.Generator,
    unfinished: tuple[int, str] | None,
) -> tuple[int, int, int]:
    """Write lines (sorted) into hour folders of 1-4 part files; returns lines, files, hours.

    `unfinished` is (hour in epoch ms, cut line): that hour's last file ends with the line,
    cut off and without a newline.
    """
    n_lines = n_files = n_hours = 0
    hour_of = (lines["sort_key"] // 4 // (HOUR_S * 1000)).to_numpy()
    texts = lines["line"].to_list()
    bounds = np.flatnonzero(np.diff(hour_of)) + 1
    for lo, hi in zip([0, *bounds], [*bounds, len(texts)], strict=True):
        hour_ms = int(hour_of[lo]) * HOUR_S * 1000
        n_parts = min(int(rng.integers(1, 5)), hi - lo)
        parts = [list(p) for p in np.array_split(np.array(texts[lo:hi], dtype=object), n_parts)]
        cut_part = None
        if unfinished is not None and unfinished[0] == hour_ms:
            parts[-1].append(unfinished[1])
            cut_part = len(parts) - 1
        hour = to_datetime(hour_ms // 1000)
        n_files += layout.write_clickstream_hour(root, hour, parts, unfinished_part=cut_part)
        n_lines += sum(len(p) for p in parts)
        n_hours += 1
    return n_lines, n_files, n_hours


def unfinished_line(
    lines: pl.DataFrame, rng: np.random.Generator, event_counter: int, seed: int
) -> tuple[int, str]:
    """A line cut off mid-write at the end of a randomly chosen hour's last file."""
    hours = (lines["sort_key"] // 4 // (HOUR_S * 1000)).unique().sort().to_numpy()
    hour = int(hours[rng.integers(0, len(hours))])
    in_hour = lines.filter(pl.col("sort_key") // 4 // (HOUR_S * 1000) == hour)
    template = in_hour["line"][-1]
    old_id = template.split('"event_id":"', 1)[1].split('"', 1)[0]
    fresh = template.replace(old_id, event_ids(event_counter, 1, seed)[0], 1)
    return hour * HOUR_S * 1000, fresh[: len(fresh) // 2]


def write_view_chunk(
    root: Path,
    views: pl.DataFrame,
    rng: np.random.Generator,
    planter: BadInputPlanter,
    last_chunk: bool,
    tally: ViewTally,
    seed: int,
) -> None:
    """Plant bad input into one chunk of product views and write it hour by hour."""
    if last_chunk:
        # The truncated last line of a file is one of the malformed JSON lines.
        planter.planted["product_views"]["malformed_json"] = (
            planter.planted["product_views"].get("malformed_json", 0) + 1
        )
    counts = planter.counts("product_views", views.height, last_chunk)
    bad = planter.pick_rows(views.height, counts)
    views = plant_bad_views(views, bad, planter.rng)
    lines = encode_views(views, tally.next_event, seed)
    lines = plant_bad_lines_of_views(lines, bad, planter.rng)
    tally.next_event += views.height
    unfinished = None
    if last_chunk:
        unfinished = unfinished_line(lines, planter.rng, tally.next_event, seed)
        tally.next_event += 1
    n_lines, n_files, n_hours = write_view_hours(root, lines, rng, unfinished)
    tally.lines += n_lines
    tally.files += n_files
    tally.hours += n_hours


def write_clickstream(
    data_dir: Path,
    scale: Scale,
    seed: int,
    catalogue: Catalogue,
    customers: Customers,
    online: list[OrderChunk],
    planter: BadInputPlanter,
) -> ViewTally:
    """Write the product views of the clickstream window, six hours of sessions at a time."""
    root = layout.clickstream_root(data_dir)
    click_start = HISTORY_END_S - scale.clickstream_hours * HOUR_S
    tally, carried, progress = ViewTally(), None, Progress("product views")
    buying = buying_views(seed, catalogue, customers, online, tally)
    buying = buying.filter(pl.col("viewed_ms") >= click_start * 1000)
    chunks = list(time_chunks(click_start, HISTORY_END_S, VIEW_CHUNK_S))
    for index, lo, hi in chunks:
        rng = rng_for(seed, STREAM_CLICKSTREAM, index)
        sessions = browsing_sessions(rng, scale, customers, (lo, hi))
        views = browsing_views(rng, catalogue, customers, sessions, tally.next_session, seed)
        tally.next_session += len(sessions["start_ms"])
        in_chunk = pl.col("viewed_ms").is_between(lo * 1000, hi * 1000, closed="left")
        views = pl.concat([v for v in (carried, buying.filter(in_chunk), views) if v is not None])
        views = views.filter(pl.col("viewed_ms") < HISTORY_END_S * 1000)
        carried = views.filter(pl.col("viewed_ms") >= hi * 1000)
        views = views.filter(pl.col("viewed_ms") < hi * 1000)
        views = views.sort("viewed_ms", "session_id", maintain_order=True)
        views = views.with_columns(
            product_id=pl.Series(catalogue.product_ids[views["product"].to_numpy()])
        )
        lines_before = tally.lines
        write_view_chunk(root, views, rng, planter, index == len(chunks) - 1, tally, seed)
        progress.add(tally.lines - lines_before)
    progress.finish()
    return tally


def buying_views(
    seed: int,
    catalogue: Catalogue,
    customers: Customers,
    online: list[OrderChunk],
    tally: ViewTally,
) -> pl.DataFrame:
    """Views of every session that ended in an online order of the clickstream window."""
    orders = OrderChunk(
        orders=pl.concat([chunk.orders for chunk in online]),
        lines=pl.concat([chunk.lines for chunk in online]),
    )
    rng = rng_for(seed, STREAM_CLICKSTREAM, 1_000_000)
    views = purchase_views(rng, catalogue, customers, orders, tally.next_session, seed)
    tally.next_session += orders.orders.height
    return views


# --- CRM contacts ---------------------------------------------------------------------------


def preferred_categories(catalogue: Catalogue, customers: Customers) -> np.ndarray:
    """Each customer's two favourite categories as `first;second`."""
    names = np.array([row[1] for row in catalogue.categories], dtype=object)
    favourites = np.empty((len(customers.tastes), 2), dtype=np.int64)
    for lo in range(0, len(customers.tastes), PICK_CHUNK):
        affinity = customers.tastes[lo : lo + PICK_CHUNK] @ catalogue.category_vectors.T
        rows = np.arange(len(affinity))
        first = np.argmax(affinity, axis=1)
        affinity[rows, first] = -np.inf
        favourites[lo : lo + PICK_CHUNK] = np.stack([first, np.argmax(affinity, axis=1)], 1)
    return names[favourites[:, 0]] + ";" + names[favourites[:, 1]]


def birthdates(rng: np.random.Generator, age_band: np.ndarray) -> pl.Series:
    """Birthdates that put each customer in their age band at the end of the history."""
    low = np.array([r[0] for r in AGE_RANGES])[age_band]
    high = np.array([r[1] for r in AGE_RANGES])[age_band]
    age = low + (rng.random(len(age_band)) * (high - low + 1)).astype(np.int64)
    frame = pl.DataFrame(
        {"year": HISTORY_END.year - age, "days": rng.integers(0, 365, len(age_band))}
    )
    birthday = pl.date(pl.col("year"), HISTORY_END.month, HISTORY_END.day)
    return frame.select(
        (birthday - pl.duration(days=pl.col("days"))).dt.strftime("%Y-%m-%d").alias("birthdate")
    )["birthdate"]


def with_gaps(rng: np.random.Generator, values: pl.Series, share: float) -> pl.Series:
    """The values with a share of them left empty, as in a real CRM."""
    empty = pl.Series(rng.random(len(values)) < share)
    return pl.select(pl.when(empty).then(None).otherwise(values).alias(values.name)).to_series()


def contact_table(
    seed: int, catalogue: Catalogue, customers: Customers, planter: BadInputPlanter
) -> pl.DataFrame:
    """One CRM contact per customer, in sign-up order, with a few bad records."""
    rng = rng_for(seed, STREAM_CRM)
    n = len(customers.customer_ids)
    cities = [city for row in STATES for city in row[2]]
    first_city = np.cumsum([0, *(len(row[2]) for row in STATES)])[:-1]
    changed = rng.random(n) < 0.35
    later = (rng.random(n) * (HISTORY_END_S - customers.created_at)).astype(np.int64)
    birth = birthdates(rng, customers.age_band)
    columns = {
        "contactid": layout.contact_ids(customers.customer_ids.tolist()),
        "contoso_customerid": pl.Series(customers.customer_ids),
        "birthdate": with_gaps(rng, birth, 0.10),
        "contoso_ageband": with_gaps(rng, pl.Series(np.array(AGE_BANDS)[customers.age_band]), 0.03),
        "contoso_incomeband": with_gaps(
            rng, pl.Series(np.array(INCOME_BANDS)[customers.income_band]), 0.12
        ),
        "contoso_householdsize": with_gaps(rng, pl.Series(customers.household_size), 0.05),
        "address1_city": with_gaps(
            rng, pl.Series(np.array(cities)[first_city[customers.state] + customers.city]), 0.04
        ),
        "address1_stateorprovince": with_gaps(
            rng, pl.Series(np.array([row[0] for row in STATES])[customers.state]), 0.04
        ),
        "contoso_preferredcategories": with_gaps(
            rng, pl.Series(preferred_categories(catalogue, customers).astype(str)), 0.6
        ),
        "createdon": customers.created_at,
        "modifiedon": customers.created_at + np.where(changed, later, 0),
    }
    contacts = pl.DataFrame(columns).with_columns(
        layout.format_crm_timestamp(pl.col("createdon")),
        layout.format_crm_timestamp(pl.col("modifiedon")),
    )
    return plant_bad_contacts(contacts, planter)


def plant_bad_contacts(contacts: pl.DataFrame, planter: BadInputPlanter) -> pl.DataFrame:
    """Contacts that lost their customer id, or carry a birthdate that does not exist."""
    bad = planter.pick_rows(
        contacts.height, planter.counts("customers", contacts.height, last_chunk=True)
    )
    row = pl.int_range(pl.len())
    no_id = row.is_in(bad["missing_customer_id"].tolist())
    impossible = row.is_in(bad["invalid_birthdate"].tolist())
    day = pl.when(row % 2 == 0).then(pl.lit("-02-30")).otherwise(pl.lit("-02-31"))
    year = pl.col("birthdate").str.slice(0, 4).fill_null("1990")
    return contacts.with_columns(
        contoso_customerid=pl.when(no_id).then(None).otherwise(pl.col("contoso_customerid")),
        birthdate=pl.when(impossible).then(year + day).otherwise(pl.col("birthdate")),
    )


# --- the whole world ------------------------------------------------------------------------


def generate(data_dir: Path, scale_name: str, seed: int) -> dict:
    """Write a synthetic world into `<data_dir>/sources` and return its manifest."""
    scale = SCALES[scale_name]
    data_dir = Path(data_dir)
    layout.reset_sources(data_dir)
    planter = BadInputPlanter(scale.bad_share, rng_for(seed, STREAM_BAD_INPUT))
    logger.info(
        "generating the %s world (seed %d): %s customers, %s products, %d days",
        scale.name,
        seed,
        f"{scale.customers:,}",
        f"{scale.products:,}",
        scale.history_days,
    )
    catalogue = build_catalogue(scale, seed)
    customers = build_customers(scale, seed, catalogue)
    n_images = write_product_images(data_dir, catalogue, seed, planter)
    table_counts, online = write_transactions(data_dir, scale, seed, catalogue, customers, planter)
    views = write_clickstream(data_dir, scale, seed, catalogue, customers, online, planter)
    logger.info("drawing CRM contacts")
    contacts = contact_table(seed, catalogue, customers, planter)
    progress = Progress("CRM contacts")
    layout.write_contact_pages(
        layout.crm_root(data_dir), contacts, scale.crm_page_size, on_page=progress.add
    )
    progress.finish()

    manifest = {
        "dataset": "synthetic",
        "scale": scale.name,
        "seed": seed,
        "history_start": iso_utc(HISTORY_END_S - scale.history_days * DAY_S),
        "history_end": iso_utc(HISTORY_END_S),
        "clickstream_start": iso_utc(HISTORY_END_S - scale.clickstream_hours * HOUR_S),
        "clickstream_end": iso_utc(HISTORY_END_S),
        "counts": {
            **table_counts,
            "customers": contacts.height,
            "product_views": views.lines,
            "clickstream_files": views.files,
            "clickstream_hours": views.hours,
            "product_images": n_images,
        },
        "bad_input": {
            table: {reason: planter.planted[table].get(reason, 0) for reason in reasons}
            for table, reasons in BAD_INPUT_REASONS.items()
        },
    }
    layout.write_manifest(data_dir, manifest)
    return manifest

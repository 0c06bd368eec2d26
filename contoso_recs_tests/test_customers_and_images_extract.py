"""Customer profiles from CRM pages and product images: loaded, quarantined, incremental."""

import contextlib

import polars as pl
import pytest

from contoso_recs.demo_data import layout
from contoso_recs.lake.quarantine import QUARANTINE_TABLE
from contoso_recs.sources.product_images import FEATURE_NAMES
from contoso_recs_tests.conftest import materialization, refresh_lake


def contact(customer_id, modified="2026-11-01T08:00:00Z", **fields) -> dict:
    record = {
        "contactid": f"c-{customer_id}",
        "contoso_customerid": customer_id,
        "birthdate": "1980-06-15",
        "contoso_ageband": None,
        "contoso_incomeband": "50-74K",
        "contoso_householdsize": 2,
        "address1_city": "Redmond",
        "address1_stateorprovince": "WA",
        "contoso_preferredcategories": "dairy;bakery",
        "createdon": "2025-01-01T00:00:00Z",
        "modifiedon": modified,
    }
    record.update(fields)
    return record


def test_crm_pages_are_followed_and_bad_profiles_quarantined(sources, data_dir, instance, lake):
    sources.crm_pages(
        [
            [contact(1), contact(2, birthdate="1990-02-31")],
            [
                contact(None),
                contact(3, contoso_ageband="25-34", birthdate=None),
                {**contact(1, modified="2026-11-02T08:00:00Z"), "contactid": "c-1-dup"},
            ],
        ]
    )

    result = refresh_lake(data_dir, instance)

    metadata = materialization(result, "lake", "customers")
    assert (metadata["rows_read"], metadata["rows_loaded"], metadata["rows_quarantined"]) == (
        5,
        2,
        3,
    )
    assert metadata["quarantined_by_reason"] == {
        "duplicate": 1,
        "invalid_birthdate": 1,
        "missing_customer_id": 1,
    }
    customers = lake.read("customers").sort("customer_id")
    assert customers.select("customer_id", "contact_id", "age_band").rows() == [
        (1, "c-1-dup", "45-54"),
        (3, "c-3", "25-34"),
    ]


def test_personal_data_stays_out_of_the_ui_preview(sources, data_dir, instance):
    sources.crm_pages([[contact(1)]])

    result = refresh_lake(data_dir, instance)

    preview = materialization(result, "lake", "customers")["preview"]
    assert "Redmond" not in preview
    assert "1980" not in preview
    assert "region" in preview


def test_only_profiles_changed_since_the_watermark_are_read_again(
    sources, data_dir, instance, lake
):
    sources.crm_pages([[contact(1), contact(2)]])
    refresh_lake(data_dir, instance)
    sources.crm_pages(
        [[contact(1), contact(2, modified="2026-11-05T08:00:00Z", contoso_incomeband="75-99K")]]
    )

    result = refresh_lake(data_dir, instance)

    metadata = materialization(result, "lake", "customers")
    assert (metadata["watermark_before"], metadata["watermark"]) == (
        "2026-11-01T08:00:00Z",
        "2026-11-05T08:00:00Z",
    )
    assert (metadata["rows_read"], metadata["rows_updated"]) == (2, 1)
    income = lake.read("customers").sort("customer_id")["income_band"].to_list()
    assert income == ["50-74K", "75-99K"]


def test_images_become_a_manifest_and_features_and_unreadable_ones_are_quarantined(
    sources, data_dir, instance, lake
):
    sources.image("10.png", rgb=(255, 0, 0))
    sources.image("11.png", rgb=(0, 0, 255))
    sources.image("12.png", data=b"<html>503</html>")
    sources.image("logo.png", rgb=(1, 2, 3))

    result = refresh_lake(data_dir, instance)

    manifest = materialization(result, "lake", "product_images")
    assert (manifest["rows_read"], manifest["rows_loaded"], manifest["rows_quarantined"]) == (
        4,
        2,
        2,
    )
    features = lake.read("product_image_features").sort("product_id")
    red, blue = features["features"].to_list()
    by_name = dict(zip(FEATURE_NAMES, red, strict=True))
    assert (by_name["mean_red"], by_name["mean_blue"]) == (1.0, 0.0)
    assert dict(zip(FEATURE_NAMES, blue, strict=True))["mean_blue"] == 1.0
    reasons = lake.read(QUARANTINE_TABLE).filter(pl.col("target_table") == "product_images")
    assert sorted(zip(reasons["source_ref"], reasons["reason"], strict=True)) == [
        ("12.png", "unreadable_image"),
        ("logo.png", "invalid_product_id"),
    ]


def test_unchanged_images_are_not_read_again(sources, data_dir, instance):
    sources.image("10.png", rgb=(255, 0, 0))
    refresh_lake(data_dir, instance)
    sources.image("11.png", rgb=(0, 255, 0))

    result = refresh_lake(data_dir, instance)

    manifest = materialization(result, "lake", "product_images")
    assert (manifest["files_landed"], manifest["rows_read"], manifest["dagster/row_count"]) == (
        2,
        1,
        2,
    )


def test_a_quarantined_image_is_not_read_again_until_it_changes(sources, data_dir, instance, lake):
    sources.image("10.png", rgb=(255, 0, 0))
    sources.image("12.png", data=b"<html>503</html>")
    refresh_lake(data_dir, instance)

    unchanged = materialization(refresh_lake(data_dir, instance), "lake", "product_images")
    assert (
        unchanged["rows_read"],
        unchanged["rows_quarantined"],
        unchanged["files_quarantined_before"],
    ) == (0, 0, 1)

    sources.image("12.png", rgb=(0, 255, 0))
    fixed = materialization(refresh_lake(data_dir, instance), "lake", "product_images")
    assert (fixed["rows_read"], fixed["rows_loaded"], fixed["files_quarantined_before"]) == (
        1,
        1,
        0,
    )
    assert sorted(lake.read("product_images")["product_id"].to_list()) == [10, 12]
    rejects = lake.read(QUARANTINE_TABLE).filter(pl.col("target_table") == "product_images")
    assert rejects.is_empty()  # loaded now: the quarantine keeps the files not loaded


def image_rejects(lake) -> list[tuple[str, str]]:
    rejects = lake.read(QUARANTINE_TABLE).filter(pl.col("target_table") == "product_images")
    return list(rejects.select("source_ref", "reason").iter_rows())


def image_products(lake) -> tuple[list, list]:
    manifest = lake.read("product_images").sort("product_id")
    features = lake.read("product_image_features").sort("product_id")
    return list(manifest.select("product_id", "path").iter_rows()), features["product_id"].to_list()


@pytest.mark.parametrize("crashing_table", ["product_image_features", "product_images"])
def test_an_image_load_interrupted_before_its_manifest_is_read_again(
    crashing_table, sources, data_dir, instance, lake, monkeypatch
):
    sources.image("10.png", rgb=(255, 0, 0))
    refresh_lake(data_dir, instance)
    sources.image("11.png", rgb=(0, 0, 255))
    original_upsert = type(lake).upsert

    def crash_on_manifest(self, table, *args, **kwargs):
        if table == crashing_table:
            raise KeyboardInterrupt("machine lost power")
        return original_upsert(self, table, *args, **kwargs)

    monkeypatch.setattr(type(lake), "upsert", crash_on_manifest)
    with contextlib.suppress(KeyboardInterrupt):
        refresh_lake(data_dir, instance)
    monkeypatch.setattr(type(lake), "upsert", original_upsert)

    manifest = materialization(refresh_lake(data_dir, instance), "lake", "product_images")
    assert (manifest["rows_read"], manifest["rows_loaded"]) == (1, 1)
    assert image_products(lake) == ([(10, "10.png"), (11, "11.png")], [10, 11])


def test_the_manifest_follows_deleted_renamed_and_broken_images(sources, data_dir, instance, lake):
    sources.image("10.png", rgb=(255, 0, 0))
    sources.image("11.png", rgb=(0, 0, 255))
    sources.image("12.png", rgb=(0, 255, 0))
    refresh_lake(data_dir, instance)
    folder = layout.product_images_root(data_dir)
    (folder / "10.png").unlink()
    (folder / "11.png").unlink()
    sources.image("011.png", rgb=(0, 0, 128))  # renamed, and a new picture
    sources.image("12.png", data=b"<html>503</html>")  # a broken upload over a good one

    manifest = materialization(refresh_lake(data_dir, instance), "lake", "product_images")

    assert (manifest["rows_read"], manifest["rows_loaded"], manifest["rows_quarantined"]) == (
        2,
        1,
        1,
    )
    assert (manifest["images_gone"], manifest["rows_deleted"]) == (2, 2)
    assert image_products(lake) == ([(11, "011.png")], [11])
    assert image_rejects(lake) == [("12.png", "unreadable_image")]


def test_a_duplicate_image_loads_once_the_image_it_duplicated_is_gone(
    sources, data_dir, instance, lake
):
    sources.image("10.png", rgb=(255, 0, 0))
    refresh_lake(data_dir, instance)
    sources.image("010.png", rgb=(0, 255, 0))
    first = materialization(refresh_lake(data_dir, instance), "lake", "product_images")
    assert first["quarantined_by_reason"] == {"duplicate": 1}
    assert image_products(lake) == ([(10, "10.png")], [10])
    (layout.product_images_root(data_dir) / "10.png").unlink()

    refresh_lake(data_dir, instance)

    assert image_products(lake) == ([(10, "010.png")], [10])
    assert lake.read(QUARANTINE_TABLE).filter(pl.col("target_table") == "product_images").is_empty()


def test_a_broken_re_upload_gives_the_product_to_its_waiting_duplicate(
    sources, data_dir, instance, lake
):
    sources.image("12.png", rgb=(255, 0, 0))
    refresh_lake(data_dir, instance)
    sources.image("012.png", rgb=(0, 255, 0))
    refresh_lake(data_dir, instance)
    sources.image("12.png", data=b"<html>503</html>")

    manifest = materialization(refresh_lake(data_dir, instance), "lake", "product_images")

    assert manifest["images_gone"] == 0
    assert image_products(lake) == ([(12, "012.png")], [12])
    assert image_rejects(lake) == [("12.png", "unreadable_image")]


def test_sources_without_images_or_profiles_give_empty_tables_that_say_so(
    data_dir, instance, lake, sources
):
    result = refresh_lake(data_dir, instance)

    assert result.success
    assert "no images" in materialization(result, "lake", "product_images")["note"]
    assert lake.read("customers").height == 0
    assert lake.read("product_image_features").height == 0

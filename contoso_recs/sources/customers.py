"""Customer profiles from the CRM (Dynamics 365) into the lake."""

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import polars as pl

from contoso_recs.lake import keys
from contoso_recs.lake.conform import (
    QUARANTINE_SCHEMA,
    Column,
    Contract,
    as_date,
    as_int,
    as_timestamp,
    conform,
)
from contoso_recs.lake.quarantine import report_quarantine, write_quarantine
from contoso_recs.lake.watermark import WATERMARK, previous_watermark
from contoso_recs.resources.crm import CONTACTS_ENTITY_SET, CrmSource
from contoso_recs.resources.lake import Lake
from contoso_recs.sources.transactions import modified_in_future

CRM_TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"
CONTACT_FIELDS = {
    "contactid": "contact_id",
    "contoso_customerid": "customer_id",
    "birthdate": "birthdate",
    "contoso_ageband": "age_band",
    "contoso_incomeband": "income_band",
    "contoso_householdsize": "household_size",
    "address1_city": "city",
    "address1_stateorprovince": "region",
    "contoso_preferredcategories": "preferred_categories",
    "createdon": "created_at",
    "modifiedon": "modified_at",
}
# Columns safe to show in the UI: no names, birth dates or towns.
PREVIEW_COLUMNS = ["customer_id", "age_band", "income_band", "household_size", "region"]
AGE_BANDS = [(65, "65+"), (55, "55-64"), (45, "45-54"), (35, "35-44"), (25, "25-34"), (0, "19-24")]

CUSTOMERS_CONTRACT = Contract(
    columns=[
        Column("customer_id", as_int, required=True, source="contoso_customerid"),
        Column("contact_id", required=True, source="contactid"),
        Column("birthdate", as_date(), source="birthdate"),
        Column("age_band", source="contoso_ageband"),
        Column("income_band", source="contoso_incomeband"),
        Column("household_size", as_int, source="contoso_householdsize"),
        Column("city", source="address1_city"),
        Column("region", source="address1_stateorprovince"),
        Column("preferred_categories", source="contoso_preferredcategories"),
        Column("created_at", as_timestamp(CRM_TIMESTAMP), source="createdon"),
        Column("modified_at", as_timestamp(CRM_TIMESTAMP), required=True, source="modifiedon"),
    ],
    unique_key=["customer_id"],
    latest_by="modified_at",
)


def records_as_text(records: list[dict[str, Any]]) -> pl.DataFrame:
    """CRM records as text columns, one per contact field; other fields are not read."""

    def text(value: Any) -> str | None:
        if value is None or isinstance(value, str):
            return value
        return json.dumps(value)

    columns = {field: [text(r.get(field)) for r in records] for field in CONTACT_FIELDS}
    return pl.DataFrame(columns, schema=dict.fromkeys(CONTACT_FIELDS, pl.String))


def not_records(records: list[Any]) -> pl.DataFrame:
    """Entries of the `value` array that are not records at all, as quarantine rows."""
    rejected = [
        {"source_ref": f"value[{i}]", "reason": "malformed_record", "raw": json.dumps(entry)}
        for i, entry in enumerate(records)
        if not isinstance(entry, dict)
    ]
    return pl.DataFrame(rejected, schema=QUARANTINE_SCHEMA)


def with_age_band(customers: pl.DataFrame) -> pl.DataFrame:
    """Fill the age band from the birth date where the CRM holds only the date."""
    age = (pl.col("modified_at").dt.year() - pl.col("birthdate").dt.year()) - (
        pl.col("modified_at").dt.ordinal_day() < pl.col("birthdate").dt.ordinal_day()
    ).cast(pl.Int32)
    band = pl.lit(None, dtype=pl.String)
    for floor, label in reversed(AGE_BANDS):
        band = pl.when(age >= floor).then(pl.lit(label)).otherwise(band)
    return customers.with_columns(pl.coalesce(pl.col("age_band"), band).alias("age_band"))


@dg.asset(
    key=keys.CUSTOMERS,
    deps=[keys.CRM_SOURCE],
    group_name=keys.LAKE_GROUP,
    kinds={"delta", "polars"},
    pool="crm",
)
def customers(
    context: dg.AssetExecutionContext, crm: CrmSource, lake: Lake
) -> dg.MaterializeResult:
    """Customer profiles (age band, income band, household, region, stated preferences)."""
    watermark = previous_watermark(context, keys.CUSTOMERS) if lake.exists("customers") else None
    records = list(crm.iter_changed_records(CONTACTS_ENTITY_SET, watermark))
    contacts = [record for record in records if isinstance(record, dict)]
    raw = records_as_text(contacts)
    ref = pl.format(
        "{}@{}", pl.col("contactid").fill_null("?"), pl.col("modifiedon").fill_null("?")
    )
    contract = replace(CUSTOMERS_CONTRACT, rules=[modified_in_future(datetime.now(UTC))])
    conformed = conform(raw, contract, ref, quarantined_before=not_records(records))
    profiles = with_age_band(conformed.loaded)

    write = lake.upsert("customers", profiles, ["customer_id"], newer_when="modified_at")
    write_quarantine(lake, "customers", conformed.all_quarantined)
    report_quarantine(context, lake)
    # Only loaded profiles move the watermark (a contact stamped in the future must not).
    latest = conformed.loaded["modified_at"].max()
    watermark_after = latest.strftime(CRM_TIMESTAMP) if latest is not None else watermark
    context.log.info(
        f"CRM contacts changed since {watermark or 'the beginning'}: {conformed.summary()}; "
        f"{write.rows_inserted} new and {write.rows_updated} updated in the lake; "
        f"watermark now {watermark_after}; {write.uri} {write.state}"
    )
    metadata = {
        **lake.table_metadata(write, preview_columns=PREVIEW_COLUMNS),
        **conformed.metadata(),
        "watermark_before": dg.MetadataValue.text(watermark or ""),
        WATERMARK: dg.MetadataValue.text(watermark_after or ""),
    }
    return dg.MaterializeResult(metadata=metadata)


def customers_defs() -> dg.Definitions:
    source = dg.AssetSpec(
        keys.CRM_SOURCE,
        description="Customer profiles (contacts) in Dynamics 365, read through the Web API.",
        group_name=keys.SOURCES_GROUP,
        kinds={"dynamics365"},
    )
    return dg.Definitions(assets=[source, customers])

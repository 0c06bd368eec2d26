"""Shared fixtures: tiny hand-built source systems and a real ephemeral Dagster instance."""

import json
from datetime import datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from contoso_recs.automation.jobs import clickstream_job, lake_refresh_job
from contoso_recs.definitions import build_definitions
from contoso_recs.demo_data import layout
from contoso_recs.environment import local_resources
from contoso_recs.resources.lake import Lake

PRODUCT_COLUMNS = ["product_id", "name", "category", "price", "discontinued", "modified_at"]
ORDER_COLUMNS = ["order_id", "customer_id", "store_id", "channel", "ordered_at", "modified_at"]
LINE_COLUMNS = ["order_id", "line_number", "product_id", "quantity", "amount", "modified_at"]


class Sources:
    """Writes tiny, explicit rows into the local stand-ins of the four source systems."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        db_path = layout.transactions_db_path(data_dir)
        layout.create_transactions_db(db_path).close()
        self.db_path = db_path

    def sql(self, table: str, columns: list[str], rows: list[tuple]) -> None:
        import sqlite3

        with sqlite3.connect(self.db_path) as conn:
            placeholders = ", ".join("?" for _ in columns)
            conn.executemany(
                f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) VALUES ({placeholders})",
                rows,
            )
        conn.close()

    def clickstream_file(self, hour: datetime, name: str, lines: list[str]) -> Path:
        folder = layout.clickstream_hour_dir(layout.clickstream_root(self.data_dir), hour)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_text("\n".join(lines) + "\n")
        return path

    def crm_pages(self, pages: list[list[dict]]) -> None:
        folder = layout.crm_root(self.data_dir) / "contacts"
        folder.mkdir(parents=True, exist_ok=True)
        for number, records in enumerate(pages, start=1):
            page: dict = {"@odata.context": "$metadata#contacts", "value": records}
            if number < len(pages):
                page["@odata.nextLink"] = layout.contacts_page_name(number + 1)
            (folder / layout.contacts_page_name(number)).write_text(json.dumps(page))

    def image(self, name: str, rgb: tuple[int, int, int] | None = None, data: bytes = b"") -> None:
        folder = layout.product_images_root(self.data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if rgb is None:
            (folder / name).write_bytes(data)
            return
        from PIL import Image

        pixels = np.zeros((8, 8, 3), dtype=np.uint8) + np.array(rgb, dtype=np.uint8)
        Image.fromarray(pixels, mode="RGB").save(folder / name, format="PNG")


def view_line(event_id: str, product_id: object = 10, **fields: object) -> str:
    """One product view as the app sends it; keyword fields override the defaults."""
    record = {
        "event_id": event_id,
        "event_type": "product_view",
        "customer_id": 1,
        "session_id": "s-1",
        "product_id": product_id,
        "viewed_at": "2026-11-20T10:15:00.000Z",
        "dwell_seconds": 3.5,
        "device": "ios",
    }
    record.update(fields)
    return json.dumps(record)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def sources(data_dir: Path) -> Sources:
    return Sources(data_dir)


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def lake(data_dir: Path) -> Lake:
    return local_resources(data_dir)["lake"]


def run_job(
    job_name: str, data_dir: Path, instance: dg.DagsterInstance, **kwargs
) -> dg.ExecuteInProcessResult:
    """Run one of the code location's jobs on the local resources of `data_dir`."""
    definitions = build_definitions(local_resources(data_dir))
    job = definitions.resolve_job_def(job_name)
    return job.execute_in_process(instance=instance, raise_on_error=False, **kwargs)


def refresh_lake(data_dir: Path, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return run_job(lake_refresh_job.name, data_dir, instance)


def load_hour(
    data_dir: Path, instance: dg.DagsterInstance, partition_key: str
) -> dg.ExecuteInProcessResult:
    return run_job(clickstream_job.name, data_dir, instance, partition_key=partition_key)


def materialization(result: dg.ExecuteInProcessResult, *path: str) -> dict:
    """The metadata values of the materialisation of `path` in a run."""
    key = dg.AssetKey(list(path))
    events = [
        e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key == key
    ]
    assert len(events) == 1, f"expected one materialisation of {key}, got {len(events)}"
    return {name: value.value for name, value in events[0].metadata.items()}

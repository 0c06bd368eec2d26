"""The CRM: customer profiles as Dataverse Web API records (Dynamics 365 in production)."""

import json
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

CONTACTS_ENTITY_SET = "contacts"


class CrmSource(dg.ConfigurableResource):
    """Pages of OData v4 records, followed through `@odata.nextLink`."""

    @abstractmethod
    def iter_pages(self, entity_set: str) -> Iterator[list[dict[str, Any]]]:
        """The `value` array of each page of `entity_set`, in order."""

    def iter_changed_records(
        self, entity_set: str, modified_since: str | None
    ) -> Iterator[dict[str, Any]]:
        """Records modified at or after the watermark (`modifiedon ge …` in Dataverse)."""
        for page in self.iter_pages(entity_set):
            for record in page:
                modified = record.get("modifiedon") if isinstance(record, dict) else None
                if modified_since is None or modified is None or str(modified) >= modified_since:
                    yield record


class LocalCrmFolder(CrmSource):
    """The embedded stand-in: a folder of Dataverse-shaped JSON pages per entity set.

    Each page is `{"value": [...], "@odata.nextLink": "<next page file>"}`, as the Web API
    returns them; the last page has no next link.
    """

    root: str

    def iter_pages(self, entity_set: str) -> Iterator[list[dict[str, Any]]]:
        folder = Path(self.root) / entity_set
        first = folder / "page-00001.json"
        if not first.exists():
            return
        page_path: Path | None = first
        seen: set[Path] = set()
        while page_path is not None:
            if page_path in seen:
                raise ValueError(f"CRM page links loop back to {page_path.name}")
            seen.add(page_path)
            try:
                page = json.loads(page_path.read_text())
            except (OSError, ValueError) as error:
                raise ValueError(
                    f"CRM page {page_path.name} of {entity_set} cannot be read as OData JSON: "
                    f"{type(error).__name__}"
                ) from None
            records = page.get("value") if isinstance(page, dict) else None
            if not isinstance(records, list):
                raise ValueError(f"CRM page {page_path.name} of {entity_set} has no value array")
            yield records
            next_link = page.get("@odata.nextLink")
            page_path = folder / next_link if next_link else None

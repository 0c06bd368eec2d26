"""The blob landing zone: hourly clickstream files and product images (Azure Blob in production)."""

from abc import abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

CLICKSTREAM_CONTAINER = "clickstream"
PRODUCT_IMAGES_CONTAINER = "product-images"


@dataclass(frozen=True)
class LandedFile:
    """One file in the landing zone, with what is needed to notice that it changed."""

    path: str
    size: int
    modified_at: datetime

    @property
    def fingerprint(self) -> str:
        return f"{self.path}:{self.size}:{self.modified_at.timestamp():.6f}"


def clickstream_hour_prefix(hour: datetime) -> str:
    """The folder of one hour of clickstream files: `YYYY/MM/DD/HH`."""
    return hour.strftime("%Y/%m/%d/%H")


class LandingZone(dg.ConfigurableResource):
    """Containers of files, listed by prefix and read whole."""

    @abstractmethod
    def list_files(self, container: str, prefix: str = "") -> list[LandedFile]:
        """Files under `prefix` in `container`, sorted by path."""

    @abstractmethod
    def read_bytes(self, container: str, path: str) -> bytes:
        """The content of one file."""


class LocalLandingZone(LandingZone):
    """The embedded stand-in: a local folder with one sub-folder per Blob container."""

    root: str

    def list_files(self, container: str, prefix: str = "") -> list[LandedFile]:
        base = Path(self.root) / container
        start = base / prefix if prefix else base
        if not start.exists():
            return []
        files = []
        for path in sorted(p for p in start.rglob("*") if p.is_file()):
            stat = path.stat()
            files.append(
                LandedFile(
                    path=path.relative_to(base).as_posix(),
                    size=stat.st_size,
                    modified_at=datetime.fromtimestamp(stat.st_mtime, tz=UTC),
                )
            )
        return files

    def read_bytes(self, container: str, path: str) -> bytes:
        return (Path(self.root) / container / path).read_bytes()

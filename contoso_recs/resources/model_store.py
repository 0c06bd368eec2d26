"""The model store: every trained model kept as a version, and which one is promoted."""

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

CURRENT_FILE = "current.json"
CARD_FILE = "model_card.json"


class ModelStore(dg.ConfigurableResource):
    """Model bundles under one folder, one sub-folder per version, with a promotion pointer.

    Promotion rewrites `current.json` atomically (write, then rename), so a reader sees either
    the previous promoted version or the new one, never half of it.
    """

    root: str

    def version_dir(self, version: str) -> Path:
        return Path(self.root) / version

    def write_card(self, version: str, card: dict[str, Any]) -> Path:
        """What a model version is: metrics, parameters, and the lake versions it was built on."""
        path = self.version_dir(version) / CARD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(card, indent=2, sort_keys=True, default=str))
        return path

    def card(self, version: str) -> dict[str, Any]:
        return json.loads((self.version_dir(version) / CARD_FILE).read_text())

    def update_card(self, version: str, **fields: Any) -> Path:
        return self.write_card(version, {**self.card(version), **fields})

    def current_version(self) -> str | None:
        pointer = Path(self.root) / CURRENT_FILE
        if not pointer.exists():
            return None
        return json.loads(pointer.read_text())["version"]

    def promote(self, version: str) -> None:
        if not (self.version_dir(version) / CARD_FILE).exists():
            raise ValueError(f"model version {version} is not in the store at {self.root}")
        pointer = Path(self.root) / CURRENT_FILE
        staging = pointer.with_suffix(".json.tmp")
        staging.write_text(json.dumps({"version": version}))
        os.replace(staging, pointer)

    def versions(self) -> list[str]:
        root = Path(self.root)
        if not root.exists():
            return []
        return sorted(p.name for p in root.iterdir() if (p / CARD_FILE).exists())

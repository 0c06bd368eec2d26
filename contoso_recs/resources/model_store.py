"""The model store: every trained model kept as a version, and which one is promoted."""

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from contoso_recs.files import write_text_atomically

CURRENT_FILE = "current.json"
CARD_FILE = "model_card.json"
# Versions kept besides the promoted one: a quarter of weekly models to go back to. At least
# the weeks a retrain's blend rule learns from (learned.RULE_WEEKS), kept beside earlier models.
KEEP_VERSIONS = 12
MIN_KEEP_VERSIONS = 4
# A version being removed is renamed to this prefix first, so it stops being a version at once
# and a removal cut short is finished by the next one.
REMOVING_PREFIX = ".removing-"


class ModelStore(dg.ConfigurableResource):
    """Model bundles under one folder, one sub-folder per version, with a promotion pointer.

    Promotion rewrites `current.json` and a card update rewrites `model_card.json` atomically
    (write a file of its own, then rename), so a reader sees either the previous content or
    the new one, never half of it, even with two runs writing at once.
    """

    root: str
    keep_versions: int = Field(
        default=KEEP_VERSIONS,
        ge=MIN_KEEP_VERSIONS,
        description="Model versions kept, the newest by cutoff; older ones are removed after "
        "each training, except the promoted one. At least the 4 weeks a retrain's blend "
        "rule learns from.",
    )

    def version_dir(self, version: str) -> Path:
        return Path(self.root) / version

    def write_card(self, version: str, card: dict[str, Any]) -> Path:
        """What a model version is: metrics, parameters, and the lake versions it was built on."""
        path = self.version_dir(version) / CARD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_text_atomically(path, json.dumps(card, indent=2, sort_keys=True, default=str))

    def card(self, version: str) -> dict[str, Any]:
        return json.loads((self.version_dir(version) / CARD_FILE).read_text())

    def update_card(self, version: str, **fields: Any) -> Path:
        return self.write_card(version, {**self.card(version), **fields})

    def current_version(self) -> str | None:
        pointer = Path(self.root) / CURRENT_FILE
        if not pointer.exists():
            return None
        try:
            version = json.loads(pointer.read_text()).get("version")
        except (ValueError, AttributeError):
            version = None
        if not isinstance(version, str) or not version:
            raise ValueError(
                f"{pointer} does not name a promoted model version: promote one again "
                "(materialise model/promoted_model) to rewrite it"
            )
        return version

    def promote(self, version: str) -> None:
        if not (self.version_dir(version) / CARD_FILE).exists():
            raise ValueError(f"model version {version} is not in the store at {self.root}")
        write_text_atomically(Path(self.root) / CURRENT_FILE, json.dumps({"version": version}))

    def versions(self) -> list[str]:
        root = Path(self.root)
        if not root.exists():
            return []
        return sorted(
            p.name
            for p in root.iterdir()
            if not p.name.startswith(".") and (p / CARD_FILE).exists()
        )

    def remove_old_versions(self) -> list[str]:
        """Delete every version but the `keep_versions` newest (by the cutoff on its card,
        then when it was trained) and the promoted one; the names removed, oldest first.

        Each is renamed out of the store before it is deleted, so readers never meet half a
        version, and the files of one whose removal was cut short go at the next call. A folder
        without a card (a model still training) is never touched.
        """
        root = Path(self.root)
        if not root.exists():
            return []
        for leftover in root.glob(f"{REMOVING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        current = self.current_version()
        newest_first = sorted(self.versions(), key=self._age_key, reverse=True)
        old = [v for v in newest_first[self.keep_versions :] if v != current][::-1]
        for version in old:
            gone = root / f"{REMOVING_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
            os.replace(self.version_dir(version), gone)
            shutil.rmtree(gone, ignore_errors=True)
        return old

    def _age_key(self, version: str) -> tuple[str, str, str]:
        try:
            card = self.card(version)
        except (OSError, ValueError):
            card = {}
        return (str(card.get("cutoff", "")), str(card.get("trained_at", "")), version)

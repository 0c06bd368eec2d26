"""The model store: every trained model kept as a version, and which one is promoted."""

import json
import os
import shutil
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from contoso_recs.files import write_text_atomically

CURRENT_FILE = "current.json"
CARD_FILE = "model_card.json"
# The newest model of each of this many newest cutoffs is kept besides the promoted one: a
# quarter of weekly models to go back to. At least the weeks a retrain's blend rule learns from
# (learned.RULE_WEEKS), whose rows are kept beside earlier models.
KEEP_CUTOFFS = 12
MIN_KEEP_CUTOFFS = 4
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
    keep_cutoffs: int = Field(
        default=KEEP_CUTOFFS,
        ge=MIN_KEEP_CUTOFFS,
        description="The newest model of each of this many newest cutoffs (a week each for the "
        "weekly retrain) is kept; the others are removed after each training, except the "
        "promoted one. At least the 4 weeks a retrain's blend rule learns from.",
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

    def remove_old_versions(self, protect: Collection[str] = ()) -> list[str]:
        """Keep the newest version (by when it was trained) of each of the `keep_cutoffs`
        newest cutoffs, the promoted one and those in `protect` (a model just trained, whatever
        its cutoff); delete the others and return their names, oldest first. A retrain of a
        week replaces its earlier model there, so reruns never push out the weeks a retrain's
        rule learns from (it reads the latest rows of each week).

        Each is renamed out of the store before it is deleted, so readers never meet half a
        version, and the files of one whose removal was cut short go at the next call. A folder
        without a card (a model still training) is never touched.
        """
        root = Path(self.root)
        if not root.exists():
            return []
        for leftover in root.glob(f"{REMOVING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        kept = {self.current_version(), *protect}
        ages = {version: self._age(version) for version in self.versions()}
        newest_of_cutoff: dict[str, str] = {}
        for version, age in sorted(ages.items(), key=lambda item: item[1], reverse=True):
            newest_of_cutoff.setdefault(age[0], version)
        cutoffs = sorted(newest_of_cutoff, reverse=True)[: self.keep_cutoffs]
        kept |= {newest_of_cutoff[cutoff] for cutoff in cutoffs}
        old = sorted((v for v in ages if v not in kept), key=ages.__getitem__)
        for version in old:
            gone = root / f"{REMOVING_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
            os.replace(self.version_dir(version), gone)
            shutil.rmtree(gone, ignore_errors=True)
        return old

    def _age(self, version: str) -> tuple[str, str, str]:
        """(cutoff, when trained, name): cards written before `trained_at` sort by name."""
        try:
            card = self.card(version)
        except (OSError, ValueError):
            card = {}
        if not isinstance(card, dict):
            card = {}
        return (str(card.get("cutoff", "")), str(card.get("trained_at", "")), version)

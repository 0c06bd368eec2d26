"""Where serving bundles are published for the online endpoint."""

from pathlib import Path

import dagster as dg


class ServingStore(dg.ConfigurableResource):
    """Serving bundles under one folder, one sub-folder per model version, plus the pointer
    `current.json` naming the live one; the online endpoint's AZUREML_MODEL_DIR points here."""

    root: str

    def path(self) -> Path:
        return Path(self.root)

"""Where the embedded (`local`) environment keeps its sources, lake and Dagster instance."""

import os
from pathlib import Path

DATA_DIR_ENV_VAR = "CONTOSO_RECS_DATA_DIR"
ENVIRONMENT_ENV_VAR = "CONTOSO_RECS_ENV"
REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The folder holding the local sources, the lake and the demo's Dagster instance."""
    return Path(os.environ.get(DATA_DIR_ENV_VAR, REPO_ROOT / "data")).resolve()

"""The environments: which implementation stands behind each fixed resource key.

The asset graph never changes; only the resources do. The environment is resolved when the
Definitions are built, never at import time.
"""

import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

import dagster as dg

from contoso_recs.demo_data.layout import (
    clickstream_root,
    crm_root,
    transactions_db_path,
)
from contoso_recs.resources.crm import LocalCrmFolder
from contoso_recs.resources.lake import Lake
from contoso_recs.resources.landing import LocalLandingZone
from contoso_recs.resources.model_store import ModelStore
from contoso_recs.resources.serving_store import ServingStore
from contoso_recs.resources.transactional import SqliteTransactionalSource
from contoso_recs.settings import ENVIRONMENT_ENV_VAR, data_dir

DAGSTER_CLOUD_DEPLOYMENT_ENV_VAR = "DAGSTER_CLOUD_DEPLOYMENT_NAME"


class Environment(StrEnum):
    LOCAL = "local"
    AZURE = "azure"


def resolve_environment(environ: Mapping[str, str] | None = None) -> Environment:
    """`CONTOSO_RECS_ENV` if set, else `azure` on a Dagster+ deployment, else `local`."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(ENVIRONMENT_ENV_VAR)
    if explicit:
        try:
            return Environment(explicit.strip().lower())
        except ValueError:
            choices = ", ".join(e.value for e in Environment)
            raise ValueError(
                f"{ENVIRONMENT_ENV_VAR}={explicit!r} is not an environment; choose one of {choices}"
            ) from None
    if environ.get(DAGSTER_CLOUD_DEPLOYMENT_ENV_VAR):
        return Environment.AZURE
    return Environment.LOCAL


def local_resources(root: Path) -> dict[str, Any]:
    """The embedded environment: every source and the lake in one local folder."""
    return {
        "transactional_source": SqliteTransactionalSource(
            database_path=str(transactions_db_path(root))
        ),
        "landing_zone": LocalLandingZone(root=str(clickstream_root(root).parent)),
        "crm": LocalCrmFolder(root=str(crm_root(root))),
        "lake": Lake(root_uri=str(root / "lake")),
        "model_store": ModelStore(root=str(root / "models")),
        "serving_store": ServingStore(root=str(root / "serving")),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }


def resources_for(environment: Environment) -> dict[str, Any]:
    if environment is Environment.LOCAL:
        return local_resources(data_dir())
    raise ValueError(
        "The azure environment's resources (Azure SQL, Blob Storage, Dataverse, ADLS) are not "
        f"part of this release; unset {ENVIRONMENT_ENV_VAR} or set it to 'local'."
    )

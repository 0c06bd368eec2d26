"""The synthetic lakes the benchmarks read, built by the product itself (not timed)."""

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def synthetic_lake(data_dir: Path, scale: str) -> Path:
    """The lake of the synthetic world at `scale` under `data_dir`, built when it is missing:
    `contoso-recs demo --skip-training` generates the sources (unless already there) and loads
    them, with its own Dagster instance under `data_dir`."""
    lake = data_dir / "lake"
    if (lake / "order_lines" / "_delta_log").exists():
        return lake
    print(f"building the {scale}-scale lake under {lake} ...", file=sys.stderr, flush=True)
    command = ["demo", "--dataset", "synthetic", "--scale", scale, "--skip-training"]
    subprocess.run(
        [sys.executable, "-m", "contoso_recs.cli", *command, "--data-dir", str(data_dir)],
        cwd=REPO_ROOT,
        check=True,
        env={**os.environ, "DAGSTER_HOME": str(data_dir / "dagster_home")},
    )
    return lake

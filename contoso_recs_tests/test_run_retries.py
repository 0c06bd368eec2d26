"""A failed hourly load is run again by the instance's daemon, as under `make ui`.

The product's own local instance (the dagster.yaml `make demo` and `make ui` write), a real
`dagster-daemon` and a run launched from the code location with `dagster job launch`, as the
sensor's runs are. The hour's product views cannot be written (a plain file stands where the
lake table's folder goes), so every attempt fails.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from contoso_recs.automation.jobs import LOAD_RETRIES
from contoso_recs.demo_data.layout import clickstream_root
from contoso_recs.main_job import instance_config
from contoso_recs.settings import DATA_DIR_ENV_VAR, ENVIRONMENT_ENV_VAR

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOUR = "2026-11-20-10:00"
WAIT_SECONDS = 240


@pytest.fixture
def daemon_env(tmp_path, monkeypatch) -> dict[str, str]:
    data_dir = tmp_path / "data"
    landed = clickstream_root(data_dir) / "2026" / "11" / "20" / "10" / "part-0000.jsonl"
    landed.parent.mkdir(parents=True)
    landed.write_text('{"event_id": "e1"}\n')
    (data_dir / "lake").mkdir()
    (data_dir / "lake" / "product_views").write_text("not a Delta table")
    instance_config(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    with dg.DagsterInstance.get():  # its storage made once, before two processes open it
        pass
    env = {
        **os.environ,
        DATA_DIR_ENV_VAR: str(data_dir),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    env.pop(ENVIRONMENT_ENV_VAR, None)
    return env


def test_the_daemon_runs_a_failed_hourly_load_again_up_to_the_jobs_retries(daemon_env) -> None:
    daemon = subprocess.Popen(
        [BIN / "dagster-daemon", "run", "-w", "workspace.yaml"],
        cwd=REPO,
        env=daemon_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with dg.DagsterInstance.get() as instance:
            wait_for_the_daemon(instance)
        launch = subprocess.run(
            [
                BIN / "dagster",
                "job",
                "launch",
                "-w",
                "workspace.yaml",
                "-j",
                "clickstream_hourly",
                "--tags",
                f'{{"dagster/partition": "{HOUR}"}}',
            ],
            cwd=REPO,
            env=daemon_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert launch.returncode == 0, launch.stdout + launch.stderr
        with dg.DagsterInstance.get() as instance:
            runs = wait_for_retries(instance)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)

    assert [run.status for run in runs] == [dg.DagsterRunStatus.FAILURE] * (LOAD_RETRIES + 1)
    assert [run.tags.get("dagster/retry_number", "0") for run in runs] == [
        str(n) for n in range(LOAD_RETRIES + 1)
    ]
    assert [run.parent_run_id for run in runs[1:]] == [run.run_id for run in runs[:-1]]
    assert {run.tags["dagster/partition"] for run in runs} == {HOUR}
    assert [run.tags["dagster/will_retry"] for run in runs] == ["true"] * LOAD_RETRIES + ["false"]


def wait_for_the_daemon(instance: dg.DagsterInstance) -> None:
    """Until the daemons that start queued runs and retries have reported in."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if {"QUEUED_RUN_COORDINATOR", "EVENT_LOG_CONSUMER"} <= set(
            instance.get_daemon_heartbeats()
        ):
            return
        time.sleep(1)
    raise AssertionError(f"the daemon did not start in {WAIT_SECONDS} s")


def wait_for_retries(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """The first run and its retries, oldest first, once the last has failed for good."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        runs = sorted(instance.get_runs(), key=lambda r: int(r.tags.get("dagster/retry_number", 0)))
        if runs and runs[-1].tags.get("dagster/will_retry") == "false":
            return runs
        time.sleep(1)
    raise AssertionError(f"no retries settled in {WAIT_SECONDS} s: {instance.get_runs()}")


def test_an_instance_folder_without_run_retries_is_kept_and_warned_of(tmp_path, caplog) -> None:
    config = tmp_path / "dagster.yaml"
    config.write_text("telemetry:\n  enabled: false\n")
    assert instance_config(tmp_path) == config
    assert config.read_text() == "telemetry:\n  enabled: false\n"
    assert "does not turn run retries on" in caplog.text

    caplog.clear()
    config.unlink()
    assert "run_retries:\n  enabled: true" in instance_config(tmp_path).read_text()
    instance_config(tmp_path)
    assert "run retries" not in caplog.text

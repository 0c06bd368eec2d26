"""Run the scoring script locally under azureml-inference-server-http, bound to 127.0.0.1.

    python -m contoso_recs.serving.local_server --model-dir data/serving --port 5001

The server's own command (`azmlinfsrv`) always listens on every interface; this launcher starts
the very same server (its gunicorn application, logging and settings) on loopback only. It runs
with the interpreter of the serving environment (`.venv-serving`, which holds the server) and
imports only the standard library and the server itself. The OpenAPI document is served at
`/swagger.json?version=3`.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SERVING_DIR = Path(__file__).resolve().parent
SCORE_SCRIPT = SERVING_DIR / "score.py"
REPO_ROOT = SERVING_DIR.parents[1]
SERVING_PYTHON = REPO_ROOT / ".venv-serving" / "bin" / "python"
HOST = "127.0.0.1"
DEFAULT_PORT = 5001
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def server_environment(
    model_dir: str | Path, score_script: str | Path = SCORE_SCRIPT, workers: int = 1
) -> dict[str, str]:
    """The variables the inference server reads, for a scoring script and a model folder."""
    script = Path(score_script).resolve()
    return {
        "AZUREML_ENTRY_SCRIPT": str(script),
        # The app root holds the scoring script and the OpenAPI document (swagger3.json).
        "AML_APP_ROOT": str(script.parent),
        "AZUREML_MODEL_DIR": str(Path(model_dir).resolve()),
        "WORKER_COUNT": str(workers),
        "AML_APP_INSIGHTS_ENABLED": "false",
        "SERVER_VERSION_LOG_RESPONSE_ENABLED": "false",
    }


def serve(model_dir: str, port: int, score_script: str, workers: int) -> None:
    from azureml_inference_server_http import amlserver_linux
    from azureml_inference_server_http.constants import PACKAGE_ROOT
    from azureml_inference_server_http.log_config import load_logging_config

    env = server_environment(model_dir, score_script, workers)
    env.update(SERVER_PORT=str(port), HEALTH_PORT=str(port))
    os.environ.update(env)
    # A worker scores one request at a time: one BLAS thread each. More only contend for the
    # cores (measured in process on 2 busy cores: p50 1.3 ms with one thread, 12 ms with two).
    for variable in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(variable, "1")
    sys.path.append(env["AML_APP_ROOT"])
    load_logging_config(PACKAGE_ROOT)
    amlserver_linux.run(HOST, port, workers)


@dataclass
class Server:
    """A running local server (started by `start_server`), stopped by its process id."""

    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def post(self, body: bytes | dict, headers: dict | None = None) -> tuple[int, dict]:
        """POST /score; returns the status and the JSON answer."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(
            f"{self.url}/score",
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def start_server(
    model_dir: Path,
    log: Path,
    score_script: Path | None = None,
    env: dict | None = None,
    timeout: float = 90.0,
    workers: int = 1,
) -> Server:
    """Start the server from `.venv-serving` on a free loopback port; wait until it is healthy.

    Variables starting with CONTOSO_RECS_SERVING are not inherited: pass them in `env`.
    """
    if not SERVING_PYTHON.exists():
        raise RuntimeError(f"{SERVING_PYTHON} is missing: `make serving-setup` creates it")
    port = free_port()
    command = [
        str(SERVING_PYTHON),
        "-m",
        "contoso_recs.serving.local_server",
        "--model-dir",
        str(model_dir),
        "--port",
        str(port),
        "--score-script",
        str(score_script or SCORE_SCRIPT),
        "--workers",
        str(workers),
    ]
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CONTOSO_RECS_SERVING")}
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env={**inherited, **(env or {})},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = Server(process, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"the server did not become healthy:\n{log.read_text()[-3000:]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="folder of published serving bundles")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--score-script", default=str(SCORE_SCRIPT))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    serve(args.model_dir, args.port, args.score_script, args.workers)


if __name__ == "__main__":
    main()

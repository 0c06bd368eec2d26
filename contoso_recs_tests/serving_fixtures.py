"""A hand-built serving bundle whose answers can be worked out on paper, and a real server.

Five products on the unit circle and two customers:

    p1 (1, 0)   p2 (0.8, 0.6)   p3 (0, 1)   p4 (-1, 0)   p5 (0.28, 0.96)
    c1 (0, 1), bought p5        c2 (1, 0), bought nothing

Recent buyers: p1 1, p2 5, p3 3, p4 10, p5 0 (so the popular order is p4, p2, p3, p1, p5).
"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contoso_recs.serving.bundle import Policy, publish, write_bundle

REPO = Path(__file__).resolve().parent.parent
SERVING_PYTHON = REPO / ".venv-serving" / "bin" / "python"
PRODUCTS = ["p1", "p2", "p3", "p4", "p5"]
PRODUCT_VECTORS = [[1, 0], [0.8, 0.6], [0, 1], [-1, 0], [0.28, 0.96]]
POPULARITY = [1, 5, 3, 10, 0]
CUSTOMERS = ["c1", "c2"]
CUSTOMER_VECTORS = [[0, 1], [1, 0]]


def write_small_bundle(root: Path, version: str = "v1", policy: Policy | None = None) -> Path:
    """Write the bundle above as `root/<version>` and publish it."""
    folder = write_bundle(
        root / version,
        model_version=version,
        cutoff="2026-11-30",
        policy=policy or Policy(),
        product_ids=np.array(PRODUCTS),
        product_vectors=np.array(PRODUCT_VECTORS, dtype=np.float32),
        product_popularity=np.array(POPULARITY, dtype=np.float32),
        customer_ids=np.array(CUSTOMERS),
        customer_vectors=np.array(CUSTOMER_VECTORS, dtype=np.float32),
        owned_indptr=np.array([0, 1, 1]),
        owned_indices=np.array([4]),
    )
    publish(root, folder, version)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    """The inference server running the scoring script, on 127.0.0.1."""

    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, body: bytes | dict, headers: dict | None = None) -> tuple[int, dict]:
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


def start_server(
    model_dir: Path,
    log: Path,
    score_script: Path | None = None,
    env: dict | None = None,
    timeout: float = 90.0,
) -> Server:
    """Start the server from `.venv-serving` on a free loopback port; wait until it is healthy."""
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
    ]
    if score_script is not None:
        command += ["--score-script", str(score_script)]
    variables = {k: v for k, v in os.environ.items() if not k.startswith("CONTOSO_RECS_SERVING")}
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**variables, **(env or {})},
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

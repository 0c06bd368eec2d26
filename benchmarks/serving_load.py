"""Real-time recommendations under load: the scoring script beside a trivial one, same server.

`python -m benchmarks.serving_load` builds a serving bundle with the full-scale shapes
(2,000,000 customers, 50,000 products, 64 dimensions, about 20 bought products per customer),
starts the inference server on 127.0.0.1 twice, with the trivial scoring script (the floor) and
with the product's scoring script, and drives each with an open-loop load of 250 requests/s for
60 s after a 5 s warm-up, in 6 alternating rounds of 10 s. Latency is measured from each
request's scheduled send time, so a stall of the server (or of the client) shows up in the
figures instead of slowing the load.
Records p50, p99, errors, the ratio of the p99s and the server's peak memory with
`benchmarks.report.record("serving_load", ...)`.

Latency depends on the bundle's shapes, not on its values: vectors are random unit vectors and
bought products follow a Zipf-like popularity.
"""

import argparse
import asyncio
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.report import record
from contoso_recs.serving.bundle import MANIFEST, publish, write_bundle
from contoso_recs.serving.local_server import start_server
from contoso_recs.serving.publish import DEFAULT_POLICY

REPO_ROOT = Path(__file__).resolve().parent.parent
TRIVIAL_SCRIPT = REPO_ROOT / "benchmarks" / "trivial_score.py"
REQUEST_TIMEOUT_S = 2.0
WARM_UP_S = 5.0
ROUNDS = 6
MEAN_BOUGHT = 20


def build_full_scale_bundle(
    root: Path, customers: int, products: int, dim: int, seed: int = 0
) -> Path:
    """A published bundle of random unit vectors with the given shapes (reused when present)."""
    version = f"bench-{customers}x{products}x{dim}"
    folder = root / version
    if (folder / MANIFEST).exists():
        manifest = json.loads((folder / MANIFEST).read_text())
        if (manifest["customers"], manifest["products"], manifest["policy"]) == (
            customers,
            products,
            asdict(DEFAULT_POLICY),
        ):
            publish(root, folder, version)
            return folder
    rng = np.random.default_rng(seed)
    product_vectors = rng.standard_normal((products, dim), dtype=np.float32)
    customer_vectors = rng.standard_normal((customers, dim), dtype=np.float32)
    customer_vectors /= np.linalg.norm(customer_vectors, axis=1, keepdims=True)
    popularity = 1.0 / np.arange(1, products + 1) ** 0.8
    lengths = np.minimum(rng.geometric(1.0 / MEAN_BOUGHT, customers), 400)
    indptr = np.zeros(customers + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = rng.choice(products, size=int(indptr[-1]), p=popularity / popularity.sum())
    folder = write_bundle(
        folder,
        model_version=version,
        cutoff="2026-11-30",
        policy=DEFAULT_POLICY,
        product_ids=np.arange(1, products + 1),
        product_vectors=product_vectors,
        product_popularity=(popularity * 1000).astype(np.float32),
        customer_ids=np.arange(1, customers + 1),
        customer_vectors=customer_vectors,
        owned_indptr=indptr,
        owned_indices=indices.astype(np.int32),
    )
    publish(root, folder, version)
    return folder


def request_bodies(count: int, customers: int, products: int, seed: int = 1) -> list[bytes]:
    """Product views: Zipf-like products; 85% known customers, 10% anonymous, 5% unknown."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, products + 1) ** 0.8
    viewed = rng.choice(products, size=count, p=weights / weights.sum()) + 1
    who = rng.random(count)
    known = rng.integers(1, customers + 1, count)
    bodies = []
    for i in range(count):
        customer = str(known[i]) if who[i] < 0.85 else None if who[i] < 0.95 else f"new-{known[i]}"
        body = {"customer_id": customer, "product_id": str(viewed[i]), "k": 10}
        bodies.append(json.dumps(body).encode())
    return bodies


async def _one(port: int, body: bytes, scheduled: float, results: list) -> None:
    head = (
        f"POST /score HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + body)
            await writer.drain()
            answer = await reader.read()
            writer.close()
        ok = answer.startswith(b"HTTP/1.1 200")
    except (TimeoutError, OSError):
        ok = False
    results.append((time.perf_counter() - scheduled, ok))


async def _drive(port: int, bodies: list[bytes], rate: float) -> list[tuple[float, bool]]:
    """Send bodies[i] at start + i / rate, whatever happened to the earlier requests."""
    results: list[tuple[float, bool]] = []
    tasks = []
    start = time.perf_counter() + 0.1
    for i, body in enumerate(bodies):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(port, body, scheduled, results)))
    await asyncio.gather(*tasks)
    return results


def summary(results: list[tuple[float, bool]]) -> dict:
    latencies = np.array([t for t, _ in results]) * 1000
    return {
        "requests": len(results),
        "errors": sum(1 for _, ok in results if not ok),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "max_ms": float(latencies.max()),
    }


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of a process and its children (the server's workers)."""
    total = 0
    for process in [pid, *_children(pid)]:
        try:
            status = Path(f"/proc/{process}/status").read_text()
        except FileNotFoundError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def run(
    customers: int,
    products: int,
    dim: int,
    rate: float,
    seconds: float,
    work: Path,
    workers: int = 1,
) -> dict:
    started = time.perf_counter()
    bundle = build_full_scale_bundle(work / "bundles", customers, products, dim)
    build_seconds = time.perf_counter() - started
    bodies = request_bodies(int((seconds + WARM_UP_S) * rate), customers, products)
    warm = int(WARM_UP_S * rate)
    per_round = int(seconds * rate / ROUNDS)
    servers = {
        name: start_server(
            work / "bundles", work / f"{name}.log", score_script=script, workers=workers
        )
        for name, script in (("floor", TRIVIAL_SCRIPT), ("product", None))
    }
    results: dict[str, list] = {name: [] for name in servers}
    load_averages = [os.getloadavg()[0]]
    try:
        for server in servers.values():
            asyncio.run(_drive(server.port, bodies[:warm], rate))
        # Rounds alternate between the two servers (and which goes first), so that both see
        # the same machine: on a shared machine the load changes from minute to minute.
        for round_number in range(ROUNDS):
            chunk = bodies[warm + round_number * per_round : warm + (round_number + 1) * per_round]
            order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
            for name in order:
                results[name] += asyncio.run(_drive(servers[name].port, chunk, rate))
            load_averages.append(os.getloadavg()[0])
        peaks = {name: peak_rss_mib(server.process.pid) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    figures = {}
    for name in servers:
        figures.update({f"{name}_{key}": value for key, value in summary(results[name]).items()})
        figures[f"{name}_server_peak_rss_mib"] = peaks[name]
    figures["load_average_during"] = [round(value, 2) for value in load_averages]
    figures.update(
        {
            "description": (
                "Real-time recommendations on loopback: the inference server "
                "(azureml-inference-server-http: gunicorn sync workers, "
                f"{workers} here; an Azure ML deployment's default is 1) running the product's "
                "scoring script on a full-scale bundle, beside "
                "the same server running a trivial scoring script (the floor), same run, same "
                f"open-loop load of {rate:.0f} requests/s for {seconds:.0f} s after a "
                f"{WARM_UP_S:.0f} s warm-up, in {ROUNDS} rounds alternating between the two "
                "servers so that both meet the same machine. Latency counts from each "
                "request's scheduled send time, including a new TCP connection per request. "
                "The bundle has the full shapes with random unit vectors (latency depends on "
                "shapes, not values); 85% of requests come from known customers, 10% "
                "anonymous, 5% unknown."
            ),
            "customers": customers,
            "products": products,
            "dim": dim,
            "rate_per_second": rate,
            "server_workers": workers,
            "seconds": seconds,
            "p99_ratio_product_to_floor": figures["product_p99_ms"] / figures["floor_p99_ms"],
            "bundle_mib": sum(p.stat().st_size for p in bundle.iterdir()) / 2**20,
            "bundle_build_seconds": build_seconds,
        }
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2_000_000)
    parser.add_argument("--products", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rate", type=float, default=250.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--work", default=str(REPO_ROOT / "data" / "bench" / "serving"))
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args()
    figures = run(args.customers, args.products, args.dim, args.rate, args.seconds, Path(args.work))
    print(json.dumps(figures, indent=2))
    if not args.no_record:
        record("serving_load", figures)


if __name__ == "__main__":
    main()

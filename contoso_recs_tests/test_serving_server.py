"""The real inference server on loopback: answers, fallbacks, bad input, API key, hot swap, fuzzing.

One server (from `.venv-serving`) is started per module on a free 127.0.0.1 port and stopped
by its process id.
"""

import json
import socket
import threading
import time
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from contoso_recs.serving.local_server import start_server
from contoso_recs_tests.serving_fixtures import write_small_bundle

API_KEY = "test-key-0d41"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    write_small_bundle(root, "v1")
    return root


@pytest.fixture(scope="module")
def server(bundles, tmp_path_factory):
    running = start_server(bundles, tmp_path_factory.mktemp("log") / "server.log")
    yield running
    running.stop()


def ids(answer: dict) -> list[str]:
    return [r["product_id"] for r in answer["recommendations"]]


def test_a_known_customer_viewing_a_known_product(server):
    status, answer = server.post({"customer_id": "c1", "product_id": "p1", "k": 3})

    assert status == 200
    assert ids(answer) == ["p2", "p3", "p4"]
    assert answer["fallback"] is None
    assert answer["model_version"] == "v1"
    assert answer["recommendations"][0]["reason"] == "customer_and_viewed_product"


@pytest.mark.parametrize(
    ("request_body", "expected", "fallback"),
    [
        ({"customer_id": None, "product_id": "p1", "k": 2}, ["p2", "p5"], "viewed_product"),
        ({"product_id": "p3", "k": 2, "customer_id": "nobody"}, ["p5", "p2"], "viewed_product"),
        ({"customer_id": "c1", "product_id": "gone", "k": 2}, ["p3", "p2"], "customer"),
        ({"customer_id": None, "product_id": "gone", "k": 2}, ["p4", "p2"], "popular"),
    ],
)
def test_each_fallback_is_named_in_the_answer(server, request_body, expected, fallback):
    status, answer = server.post(request_body)

    assert status == 200
    assert (ids(answer), answer["fallback"]) == (expected, fallback)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{oops", 400, "not valid JSON"),
        (b'{"product_id": 7}', 400, "product_id must be a string"),
        (b'{"product_id": "p1", "k": 500}', 400, "between 1 and 100"),
        (b'{"product_id": "p1", "exclude": [1, 2]}', 400, "exclude[] must be a string"),
        (b'{"customer_id": "c1"}', 400, "product_id is required"),
        (json.dumps({"product_id": "p1", "exclude": ["x" * 60] * 150}).encode(), 413, "larger"),
    ],
)
def test_each_kind_of_bad_input_gets_a_4xx_with_a_clear_message(server, body, status, message):
    answered, answer = server.post(body)

    assert answered == status
    assert message in answer["message"]
    assert "Traceback" not in json.dumps(answer)


def test_a_get_on_score_is_refused_and_the_contract_is_published(server):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{server.url}/score", timeout=5)
    assert refused.value.code == 405

    with urllib.request.urlopen(f"{server.url}/swagger.json?version=3", timeout=5) as response:
        document = json.loads(response.read())
    assert document["paths"]["/score"]["post"]["operationId"] == "recommend"


def test_the_server_listens_on_loopback_only(server):
    addresses = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    outside = sorted(a for a in addresses if not a.startswith("127."))
    for address in outside:
        with socket.socket() as probe, pytest.raises(OSError):
            probe.settimeout(1)
            probe.connect((address, server.port))


def test_the_api_key_is_required_when_configured(bundles, tmp_path):
    keyed = start_server(
        bundles, tmp_path / "keyed.log", env={"CONTOSO_RECS_SERVING_API_KEY": API_KEY}
    )
    try:
        body = {"product_id": "p1", "k": 1}
        assert keyed.post(body)[0] == 401
        assert keyed.post(body, {"Authorization": "Bearer wrong"})[0] == 401
        assert keyed.post(body, {"Authorization": f"Bearer {API_KEY}"}) == (
            200,
            {
                "recommendations": [{"product_id": "p2", "score": 0.8, "reason": "viewed_product"}],
                "model_version": "v1",
                "fallback": "viewed_product",
            },
        )
    finally:
        keyed.stop()
    log = (tmp_path / "keyed.log").read_text()
    assert API_KEY not in log
    # the scoring script's own lines reach the server log: what is served, and each refusal
    assert "contoso_recs.serving - API key required: yes" in log
    assert "contoso_recs.serving.scorer - serving model v1" in log
    assert log.count("contoso_recs.serving - answered 401: no valid API key") == 2


def test_a_new_bundle_is_picked_up_under_requests_without_dropping_any(tmp_path):
    write_small_bundle(tmp_path / "bundles", "v1")
    live = start_server(tmp_path / "bundles", tmp_path / "swap.log")
    answers: dict[int, list[tuple[int, str]]] = {0: [], 1: []}
    stop = threading.Event()

    def keep_asking(client: int):
        while not stop.is_set():
            status, answer = live.post({"customer_id": "c1", "product_id": "p1", "k": 2})
            answers[client].append((status, answer.get("model_version", "")))

    clients = [threading.Thread(target=keep_asking, args=(c,)) for c in answers]
    try:
        for client in clients:
            client.start()
        time.sleep(1.0)
        write_small_bundle(tmp_path / "bundles", "v2")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (not answers[0] or answers[0][-1][1] != "v2"):
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        stop.set()
        for client in clients:
            client.join()
        live.stop()

    assert "now serving model v2 (was v1)" in (tmp_path / "swap.log").read_text()
    for client, seen in answers.items():
        versions = [version for _, version in seen]
        assert {status for status, _ in seen} == {200}, f"client {client} got an error"
        assert versions[0] == "v1" and versions[-1] == "v2"
        # Each client asks one request after the other: once it sees v2, never v1 again.
        assert set(versions[versions.index("v2") :]) == {"v2"}
        assert len(seen) > 10


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzing_the_published_contract_finds_no_server_error(server, mode):
    contract = schemathesis.openapi.from_url(f"{server.url}/swagger.json?version=3")
    operation = contract["/score"]["POST"]
    seen: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def answers_without_a_server_error(case):
        response = case.call(base_url=server.url, timeout=10)
        seen.append(response.status_code)
        assert response.status_code < 500, response.text
        body = response.json()
        if response.status_code == 200:
            assert set(body) == {"recommendations", "model_version", "fallback"}
        else:
            assert 400 <= response.status_code < 500
            assert set(body) == {"message"}

    answers_without_a_server_error()

    # Valid requests must be answered, invalid ones refused: the fuzzing reached the scorer.
    expected = 200 if mode is GenerationMode.POSITIVE else 400
    assert expected in seen

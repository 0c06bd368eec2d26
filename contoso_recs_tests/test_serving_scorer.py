"""The serving bundle, the scorer and the scoring script's init/run, called directly."""

import io
import json
import os
import time

import numpy as np
import pytest

from contoso_recs.serving import score
from contoso_recs.serving.bundle import Policy, live_bundle_dir, read_bundle, write_bundle
from contoso_recs.serving.contract import RequestError, ScoreRequest, parse_request
from contoso_recs.serving.scorer import LiveBundle, Scorer
from contoso_recs_tests.serving_fixtures import write_small_bundle


def ids(answer: dict) -> list[str]:
    return [r["product_id"] for r in answer["recommendations"]]


@pytest.fixture
def scorer(tmp_path) -> Scorer:
    return Scorer(read_bundle(write_small_bundle(tmp_path)))


def test_a_known_customer_viewing_a_known_product_gets_both_combined(scorer):
    answer = scorer.recommend(ScoreRequest("c1", "p1", k=3))

    # query (1, 1)/sqrt(2); p1 is the viewed product and p5 was bought before, so neither shows.
    assert ids(answer) == ["p2", "p3", "p4"]
    assert [r["score"] for r in answer["recommendations"]] == pytest.approx(
        [1.4 / np.sqrt(2), 1 / np.sqrt(2), -1 / np.sqrt(2)], abs=1e-6
    )
    assert {r["reason"] for r in answer["recommendations"]} == {"customer_and_viewed_product"}
    assert answer["fallback"] is None
    assert answer["model_version"] == "v1"


def test_an_anonymous_session_gets_recommendations_from_the_viewed_product_alone(scorer):
    answer = scorer.recommend(ScoreRequest(None, "p1", k=2))

    assert ids(answer) == ["p2", "p5"]
    assert answer["fallback"] == "viewed_product"


def test_an_unknown_customer_is_served_like_an_anonymous_session(scorer):
    answer = scorer.recommend(ScoreRequest("c-unknown", "p3", k=2))

    assert ids(answer) == ["p5", "p2"]
    assert answer["fallback"] == "viewed_product"


def test_an_unknown_product_gets_the_customers_own_recommendations(scorer):
    answer = scorer.recommend(ScoreRequest("c1", "p-unknown", k=2))

    # c1 is (0, 1): p3 first; p5 (0.96) was bought before, so p2 (0.6) comes second.
    assert ids(answer) == ["p3", "p2"]
    assert answer["fallback"] == "customer"


def test_both_unknown_gets_the_popular_products_minus_the_exclusions(scorer):
    assert ids(scorer.recommend(ScoreRequest(None, "p-unknown", k=3))) == ["p4", "p2", "p3"]
    answer = scorer.recommend(ScoreRequest("c-unknown", "p-unknown", k=3, exclude=("p4",)))
    assert ids(answer) == ["p2", "p3", "p1"]
    assert answer["fallback"] == "popular"


def test_excluded_products_never_show(scorer):
    answer = scorer.recommend(ScoreRequest("c2", "p1", k=5, exclude=("p2", "not-a-product")))

    assert ids(answer) == ["p5", "p3", "p4"]


def test_repeats_show_when_the_policy_allows_them(tmp_path):
    scorer = Scorer(read_bundle(write_small_bundle(tmp_path, policy=Policy(allow_repeats=True))))

    assert ids(scorer.recommend(ScoreRequest("c1", "p1", k=3))) == ["p2", "p5", "p3"]


def test_popularity_weight_lifts_popular_products(tmp_path):
    policy = Policy(customer_weight=0.0, popularity_weight=1.0)
    scorer = Scorer(read_bundle(write_small_bundle(tmp_path, policy=policy)))

    # Viewing p1: p2 scores 0.8 + log(6) = 2.59, p4 -1 + log(11) = 1.40, p3 0 + log(4) = 1.39.
    assert ids(scorer.recommend(ScoreRequest(None, "p1", k=2))) == ["p2", "p4"]


def test_k_beyond_the_allowed_products_returns_them_all(scorer):
    assert ids(scorer.recommend(ScoreRequest("c1", "p1", k=100))) == ["p2", "p3", "p4"]


def test_integer_ids_are_strings_in_the_bundle_and_keep_their_rows(tmp_path):
    folder = write_bundle(
        tmp_path / "b",
        model_version="v",
        cutoff="2026-11-30",
        policy=Policy(),
        product_ids=np.array([10, 2, 33]),
        product_vectors=np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32),
        product_popularity=np.zeros(3),
        customer_ids=np.array([7, 12]),
        customer_vectors=np.array([[0, 1], [1, 0]], dtype=np.float32),
        owned_indptr=np.array([0, 1, 1]),
        owned_indices=np.array([0]),  # customer 7 bought product 10
    )
    bundle = read_bundle(folder)

    assert bundle.product_ids.tolist() == ["10", "2", "33"]
    assert bundle.customer_ids.tolist() == ["12", "7"]
    answer = Scorer(bundle).recommend(ScoreRequest("7", "33", k=3))
    assert ids(answer) == ["2"]
    answer = Scorer(bundle).recommend(ScoreRequest("12", "33", k=3))
    assert ids(answer) == ["10", "2"]


def test_the_live_bundle_is_found_through_the_pointer_or_directly(tmp_path):
    folder = write_small_bundle(tmp_path / "published")

    assert live_bundle_dir(tmp_path / "published") == folder
    assert live_bundle_dir(folder) == folder
    (tmp_path / "azure").mkdir()
    folder.rename(tmp_path / "azure" / "contoso-recs")
    assert live_bundle_dir(tmp_path / "azure") == tmp_path / "azure" / "contoso-recs"


def test_a_newly_published_bundle_replaces_the_live_one(tmp_path):
    write_small_bundle(tmp_path, "v1")
    live = LiveBundle(tmp_path, check_seconds=0.0)
    before = live.scorer()

    write_small_bundle(tmp_path, "v2")
    deadline = time.monotonic() + 10
    while live.scorer().model_version != "v2" and time.monotonic() < deadline:
        time.sleep(0.01)

    assert live.scorer().model_version == "v2"
    assert before.model_version == "v1"  # a request holding the old scorer finishes on it
    assert ids(before.recommend(ScoreRequest("c1", "p1", k=1))) == ["p2"]


def test_a_bundle_written_again_in_the_live_folder_replaces_the_live_one(tmp_path):
    # the serving_bundle job publishes the promoted model again (new customers) in its folder
    write_small_bundle(tmp_path, "v1")
    live = LiveBundle(tmp_path, check_seconds=0.0)
    before = live.scorer()

    write_small_bundle(tmp_path, "v1", policy=Policy(allow_repeats=True))
    deadline = time.monotonic() + 10
    while live.scorer() is before and time.monotonic() < deadline:
        time.sleep(0.01)

    assert live.scorer() is not before
    assert live.scorer().bundle.policy.allow_repeats


def test_a_broken_new_bundle_keeps_the_live_one(tmp_path):
    write_small_bundle(tmp_path, "v1")
    live = LiveBundle(tmp_path, check_seconds=0.0)
    (tmp_path / "v2").mkdir()
    (tmp_path / "current.json").write_text(json.dumps({"model_version": "v2", "bundle": "v2"}))

    live.scorer()
    time.sleep(0.5)

    assert live.scorer().model_version == "v1"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[" * 4000 + b"]" * 4000, 400, "not valid JSON"),  # nested deeper than Python recurses
        (b"\xff\xfe", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"product_id": 12}', 400, "product_id must be a string"),
        (b'{"customer_id": 5, "product_id": "p1"}', 400, "customer_id must be a string"),
        (b'{"customer_id": "c1"}', 400, "product_id is required"),
        (b'{"product_id": ""}', 400, "1 to 64 characters"),
        (b'{"product_id": "p1", "k": 0}', 400, "between 1 and 100"),
        (b'{"product_id": "p1", "k": 101}', 400, "between 1 and 100"),
        (b'{"product_id": "p1", "k": "5"}', 400, "k must be an integer"),
        (b'{"product_id": "p1", "k": true}', 400, "k must be an integer"),
        (b'{"product_id": "p1", "k": 2.5}', 400, "k must be an integer"),
        (b'{"product_id": "p1", "exclude": "p2"}', 400, "exclude must be a list"),
        (b'{"product_id": "p1", "exclude": [3]}', 400, "exclude[] must be a string"),
        (b'{"product_id": "p1", "colour": "red"}', 400, "unknown field(s): colour"),
        (json.dumps({"product_id": "p1", "exclude": ["p"] * 101}).encode(), 400, "at most 100"),
        (json.dumps({"product_id": "p" * 9000}).encode(), 413, "larger than 8192 bytes"),
    ],
)
def test_each_kind_of_bad_request_is_a_4xx_with_a_clear_message(body, status, message):
    with pytest.raises(RequestError) as raised:
        parse_request(body)

    assert raised.value.status == status
    assert message in raised.value.message


def test_a_request_with_defaults_parses():
    assert parse_request(b'{"customer_id": null, "product_id": "p1"}') == ScoreRequest(
        None, "p1", 10, ()
    )


class FakeRequest:
    """The parts of the server's request object that run() reads."""

    def __init__(self, body: bytes, method: str = "POST", headers: dict | None = None):
        self.method = method
        self.headers = headers or {}
        self.stream = io.BytesIO(body)


@pytest.fixture
def initialised(tmp_path, monkeypatch):
    write_small_bundle(tmp_path)
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path))
    monkeypatch.delenv(score.API_KEY_VARIABLE, raising=False)
    score.init()
    return score


def test_the_scoring_script_answers_a_request(initialised):
    reply = initialised.run(FakeRequest(b'{"customer_id": "c1", "product_id": "p1", "k": 2}'))

    assert reply.status == 200
    assert ids(reply.body) == ["p2", "p3"]
    assert reply.body["model_version"] == "v1"


def test_the_scoring_script_turns_bad_input_and_wrong_methods_into_4xx(initialised):
    assert initialised.run(FakeRequest(b"nonsense")).status == 400
    reply = initialised.run(FakeRequest(b"", method="GET"))
    assert (reply.status, reply.headers) == (405, {"Allow": "POST"})


def test_the_scoring_script_never_leaks_an_internal_error(initialised, monkeypatch):
    def broken(request):
        raise KeyError("internal detail")

    monkeypatch.setattr(score._live.scorer(), "recommend", broken)
    reply = initialised.run(FakeRequest(b'{"product_id": "p1"}'))

    assert reply.status == 500
    assert "internal detail" not in json.dumps(reply.body)


def test_the_scoring_script_requires_the_api_key_when_one_is_configured(tmp_path, monkeypatch):
    write_small_bundle(tmp_path)
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv(score.API_KEY_VARIABLE, "s3cret-key")
    score.init()
    body = b'{"product_id": "p1"}'

    assert score.run(FakeRequest(body)).status == 401
    wrong = score.run(FakeRequest(body, headers={"Authorization": "Bearer nope"}))
    assert wrong.status == 401
    assert "s3cret" not in json.dumps(wrong.body)
    right = score.run(FakeRequest(body, headers={"Authorization": "Bearer s3cret-key"}))
    assert right.status == 200


def test_init_without_a_model_dir_says_what_is_missing(monkeypatch):
    monkeypatch.delenv("AZUREML_MODEL_DIR", raising=False)

    with pytest.raises(RuntimeError, match="AZUREML_MODEL_DIR"):
        score.init()


def test_the_published_openapi_document_is_the_contract_in_code():
    from contoso_recs.serving.contract import openapi_document

    on_disk = json.loads((score.Path(score.__file__).parent / "swagger3.json").read_text())
    assert on_disk == openapi_document()
    assert os.path.basename(score.__file__) == "score.py"


@pytest.mark.parametrize("k", [1, 10, 100])
def test_the_fast_top_k_is_exactly_a_full_sort(k):
    from contoso_recs.serving.scorer import _top_k

    rng = np.random.default_rng(k)
    scores = rng.standard_normal(50_000).astype(np.float32)
    scores[rng.integers(0, 50_000, 500)] = -np.inf
    scores[rng.integers(0, 50_000, 50)] = scores.max()  # ties at the very top

    expected = np.argsort(-scores, kind="stable")[:k]
    assert _top_k(scores, k).tolist() == expected.tolist()


def test_publishing_keeps_the_three_newest_bundles_and_always_the_live_one(tmp_path):
    from contoso_recs.serving.publish import remove_old_bundles

    folders = [write_small_bundle(tmp_path, f"v{i}") for i in range(5)]
    for age, folder in enumerate(reversed(folders)):  # v4 newest, v0 oldest
        os.utime(folder / "manifest.json", (1_000_000 - age, 1_000_000 - age))

    removed = remove_old_bundles(tmp_path, keep=folders[0])

    assert sorted(p.name for p in removed) == ["v1"]
    left = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert left == ["v0", "v2", "v3", "v4"]

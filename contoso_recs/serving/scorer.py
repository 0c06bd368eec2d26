"""Recommendations for one product view, from a serving bundle; NumPy and the standard library only.

Who the customer is and what they are looking at both count: the query is a weighted sum of the
customer's vector and the viewed product's vector, and every product scores its cosine with it
(plus a popularity term when the policy asks). The viewed product itself, the products the
request excludes and, under the product page's repurchase policy, the products the customer
bought before are never returned.

Fallbacks, each named in the answer:
- an anonymous session, or a customer the bundle does not know: the viewed product alone
  (`viewed_product`);
- a product the bundle does not know: the customer alone (`customer`);
- neither known: the most popular products of the last 4 weeks (`popular`).

`LiveBundle` keeps the scorer of the live bundle and swaps in a newly published one without
dropping a request: it looks at the pointer file at most once a second, loads the new bundle on
a background thread, then replaces one reference; requests already running finish on the old
scorer.
"""

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from contoso_recs.serving.bundle import (
    POINTER,
    Bundle,
    live_bundle_dir,
    read_bundle,
    read_manifest,
)
from contoso_recs.serving.contract import ScoreRequest

log = logging.getLogger(__name__)

POINTER_CHECK_SECONDS = 1.0
SCORE_DECIMALS = 6
SAMPLE_STEP = 16
SAMPLE_MIN = 200


class Scorer:
    """Answers score requests from one bundle."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.policy = bundle.policy
        # The catalogue is small (50,000 x 64 floats is 12.8 MB): keep it in memory, ready.
        self.product_ids = np.ascontiguousarray(bundle.product_ids)
        self.product_vectors = np.ascontiguousarray(bundle.product_vectors, dtype=np.float32)
        self.popularity = np.ascontiguousarray(bundle.product_popularity, dtype=np.float32)
        self.popularity_boost = (self.policy.popularity_weight * self.popularity).astype(np.float32)
        self.popular = np.asarray(bundle.popular_products, dtype=np.int64)
        self._buffers = threading.local()

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    def recommend(self, request: ScoreRequest) -> dict:
        """The answer to one request, in the contract's shape."""
        product = _position(self.product_ids, request.product_id)
        customer = (
            _position(self.bundle.customer_ids, request.customer_id)
            if request.customer_id is not None
            else -1
        )
        banned = [_positions(self.product_ids, request.exclude)]
        if product >= 0:
            banned.append(np.array([product], dtype=np.int64))
        if customer >= 0 and not self.policy.allow_repeats:
            start, end = self.bundle.owned_indptr[customer : customer + 2]
            banned.append(np.asarray(self.bundle.owned_indices[start:end], dtype=np.int64))
        excluded = np.concatenate(banned)

        if product < 0 and customer < 0:
            return self._answer(*self._popular(excluded, request.k), "popular", "popular")
        query = np.zeros(self.product_vectors.shape[1], dtype=np.float32)
        if customer >= 0:
            query += self.policy.customer_weight * self.bundle.customer_vectors[customer]
        if product >= 0:
            query += self.policy.product_weight * self.product_vectors[product]
        if customer >= 0 and product >= 0:
            reason, fallback = "customer_and_viewed_product", None
        elif product >= 0:
            reason, fallback = "viewed_product", "viewed_product"
        else:
            reason, fallback = "customer", "customer"
        positions, scores = self._best(query, excluded, request.k)
        return self._answer(positions, scores, reason, fallback)

    def _best(
        self, query: np.ndarray, excluded: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        norm = float(np.linalg.norm(query))
        scores = self._scores_buffer()
        np.matmul(self.product_vectors, query / norm if norm > 0 else query, out=scores)
        if self.policy.popularity_weight:
            scores += self.popularity_boost
        scores[excluded] = -np.inf
        top = _top_k(scores, min(k, len(scores)))
        top = top[np.isfinite(scores[top])]
        return top, scores[top]

    def _scores_buffer(self) -> np.ndarray:
        """This thread's score vector, reused from request to request (no allocation, no page
        faults for a fresh 200 kB array each time)."""
        scores = getattr(self._buffers, "scores", None)
        if scores is None:
            scores = self._buffers.scores = np.empty(len(self.product_ids), dtype=np.float32)
        return scores

    def _popular(self, excluded: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        allowed = self.popular[~np.isin(self.popular, excluded)][:k]
        return allowed, self.popularity[allowed]

    def _answer(
        self, positions: np.ndarray, scores: np.ndarray, reason: str, fallback: str | None
    ) -> dict:
        ids = self.product_ids[positions].tolist()
        values = np.round(scores.astype(np.float64), SCORE_DECIMALS).tolist()
        return {
            "recommendations": [
                {"product_id": p, "score": s, "reason": reason}
                for p, s in zip(ids, values, strict=True)
            ],
            "model_version": self.model_version,
            "fallback": fallback,
        }


class LiveBundle:
    """The scorer of the live bundle under a model folder, swapped when a new one is published."""

    def __init__(self, model_dir: str | Path, check_seconds: float = POINTER_CHECK_SECONDS):
        self.model_dir = Path(model_dir)
        self.pointer = self.model_dir / POINTER
        self.check_seconds = check_seconds
        self._lock = threading.Lock()
        self._loading = False
        self._next_check = 0.0
        self._seen = self._pointer_state()
        self._scorer = Scorer(read_bundle(live_bundle_dir(self.model_dir)))
        self._next_check = time.monotonic() + check_seconds
        log.info(
            "serving model %s from %s (%d products, %d customers)",
            self._scorer.model_version,
            self._scorer.bundle.path,
            len(self._scorer.product_ids),
            len(self._scorer.bundle.customer_ids),
        )

    def scorer(self) -> Scorer:
        """The scorer to answer the next request with; starts a swap if the pointer moved."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.check_seconds
            self._check_pointer()
        return self._scorer

    def _pointer_state(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.pointer)
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _check_pointer(self) -> None:
        state = self._pointer_state()
        if state is None or state == self._seen:
            return
        with self._lock:
            if self._loading:
                return
            self._loading = True
            self._seen = state
        threading.Thread(target=self._swap, name="bundle-swap", daemon=True).start()

    def _swap(self) -> None:
        try:
            folder = live_bundle_dir(self.model_dir)
            live = self._scorer.bundle
            if folder.resolve() == live.path.resolve() and read_manifest(folder) == live.manifest:
                return  # the pointer was rewritten, the bundle is the one being served
            scorer = Scorer(read_bundle(folder))
            previous = self._scorer.model_version
            self._scorer = scorer
            log.info("now serving model %s (was %s)", scorer.model_version, previous)
        except Exception as error:  # a broken bundle must not take the live one down
            log.error("kept the current bundle: the new one could not be loaded (%s)", error)
        finally:
            with self._lock:
                self._loading = False


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores, best first (exact).

    A full partition of 50,000 scores costs as much as scoring them, so the threshold comes from
    every SAMPLE_STEP-th score: its k-th best is below the k-th best overall, and the few
    scores above it are the only ones sorted. Too few above it (only when many scores tie or are
    excluded) falls back to the full partition.
    """
    if len(scores) > SAMPLE_STEP * SAMPLE_MIN:
        sample = scores[::SAMPLE_STEP]
        threshold = np.partition(sample, len(sample) - k)[len(sample) - k]
        candidates = np.flatnonzero(scores >= threshold)
        if len(candidates) >= k:
            best = candidates[np.argsort(-scores[candidates], kind="stable")[:k]]
            return best
    top = np.argpartition(scores, len(scores) - k)[len(scores) - k :]
    return top[np.argsort(-scores[top], kind="stable")]


def _position(sorted_ids: np.ndarray, key: str) -> int:
    """Position of `key` in the sorted ids, or -1."""
    found = int(np.searchsorted(sorted_ids, key))
    if found < len(sorted_ids) and sorted_ids[found] == key:
        return found
    return -1


def _positions(sorted_ids: np.ndarray, keys: tuple[str, ...]) -> np.ndarray:
    if not keys:
        return np.empty(0, dtype=np.int64)
    found = [_position(sorted_ids, k) for k in keys]
    return np.array([p for p in found if p >= 0], dtype=np.int64)

"""Ranking metrics for top-k recommendation lists, over the whole catalogue.

Relevance is binary: a product is relevant to a customer when the customer bought it in the test
week. Task A counts every such product; task B counts only products the customer had not bought
before the cutoff (and its recommendations must leave those out too).
"""

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

K = 5
RECALL_K = 10
SEGMENTS = ("new", "light", "heavy")
# Bootstrap over test customers: how far a week's figure could move with other customers.
INTERVAL_METRICS = {"hr@5": "hit_rate", "ndcg@5": "ndcg"}
CONFIDENCE = 0.95
RESAMPLES = 2000
INTERVAL_SEED = 0
# What each task's intervals compare every method with, customer by customer.
INTERVAL_REFERENCE = {"A": "buy_again", "B": "popularity"}


def hit_rate(recommended: Sequence[int], relevant: set[int], k: int = K) -> float:
    """1.0 when any of the top k is relevant, else 0.0."""
    return 1.0 if any(p in relevant for p in recommended[:k]) else 0.0


def ndcg(recommended: Sequence[int], relevant: set[int], k: int = K) -> float:
    """Discounted gain of the hits in the top k over the best gain possible."""
    gain = sum(1.0 / math.log2(i + 2) for i, p in enumerate(recommended[:k]) if p in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return gain / ideal if ideal else 0.0


def average_precision(recommended: Sequence[int], relevant: set[int], k: int = K) -> float:
    """Mean of precision at each hit in the top k, over min(relevant, k)."""
    hits, total = 0, 0.0
    for i, p in enumerate(recommended[:k]):
        if p in relevant:
            hits += 1
            total += hits / (i + 1)
    denominator = min(len(relevant), k)
    return total / denominator if denominator else 0.0


def recall(recommended: Sequence[int], relevant: set[int], k: int = RECALL_K) -> float:
    """Share of the relevant products found in the top k."""
    if not relevant:
        return 0.0
    return sum(1 for p in recommended[:k] if p in relevant) / len(relevant)


def coverage(lists: Iterable[Sequence[int]], catalogue_size: int, k: int = K) -> float:
    """Share of the catalogue that appears in at least one top k."""
    shown = {p for recommended in lists for p in recommended[:k]}
    return len(shown) / catalogue_size if catalogue_size else 0.0


def already_bought_share(
    lists: Mapping[int, Sequence[int]], bought_before: Mapping[int, set[int]], k: int = K
) -> float:
    """Share of all top-k slots filled with a product the customer bought before."""
    slots, repeats = 0, 0
    for customer, recommended in lists.items():
        owned = bought_before.get(customer, set())
        slots += len(recommended[:k])
        repeats += sum(1 for p in recommended[:k] if p in owned)
    return repeats / slots if slots else 0.0


def summary(
    lists: Mapping[int, Sequence[int]],
    targets: Mapping[int, set[int]],
    bought_before: Mapping[int, set[int]],
    catalogue_size: int,
) -> dict[str, float]:
    """Every metric over the customers in `targets` (a customer without a list misses)."""
    customers = list(targets)
    if not customers:
        return {}
    shown = {c: list(lists.get(c, ())) for c in customers}
    n = len(customers)
    return {
        "hr@5": sum(hit_rate(shown[c], targets[c]) for c in customers) / n,
        "ndcg@5": sum(ndcg(shown[c], targets[c]) for c in customers) / n,
        "map@5": sum(average_precision(shown[c], targets[c]) for c in customers) / n,
        "recall@10": sum(recall(shown[c], targets[c]) for c in customers) / n,
        "coverage@5": coverage(shown.values(), catalogue_size),
        "already_bought@5": already_bought_share(shown, bought_before),
        "customers": float(n),
    }


def task_targets(
    bought_in_test: Mapping[int, set[int]], bought_before: Mapping[int, set[int]], task: str
) -> dict[int, set[int]]:
    """Relevant products per test customer for task A (all) or B (new to the customer).

    In task B a customer whose test-week products were all bought before has nothing to find
    and is left out.
    """
    if task == "A":
        return {c: set(p) for c, p in bought_in_test.items() if p}
    if task != "B":
        raise ValueError(f"task must be 'A' or 'B', not {task!r}")
    fresh = {c: p - bought_before.get(c, set()) for c, p in bought_in_test.items()}
    return {c: p for c, p in fresh.items() if p}


def evaluate_task(
    lists: Mapping[int, Sequence[int]],
    targets: Mapping[int, set[int]],
    bought_before: Mapping[int, set[int]],
    segments: Mapping[int, str],
    catalogue_size: int,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Metrics over all test customers, and per segment (new, light, heavy)."""
    overall = summary(lists, targets, bought_before, catalogue_size)
    by_segment = {}
    for segment in SEGMENTS:
        members = {c: t for c, t in targets.items() if segments.get(c) == segment}
        by_segment[segment] = summary(lists, members, bought_before, catalogue_size)
    return overall, by_segment


def per_customer(
    lists: Mapping[int, Sequence[int]], targets: Mapping[int, set[int]], metric: str
) -> np.ndarray:
    """`metric` (a key of INTERVAL_METRICS) of each customer in `targets`, by customer id (so a
    seeded bootstrap draws the same customers whatever order the targets were built in)."""
    score = {"hit_rate": hit_rate, "ndcg": ndcg}[INTERVAL_METRICS[metric]]
    return np.array(
        [score(list(lists.get(c, ())), targets[c]) for c in sorted(targets)], dtype=float
    )


def interval(values: np.ndarray) -> tuple[float, float]:
    """CONFIDENCE percentile bootstrap interval of the mean of `values` (one per customer).

    For a paired comparison pass the per-customer differences of two methods: customers are
    resampled together, so what both methods share does not widen the interval.
    """
    if len(values) < 2 or np.all(values == values[0]):
        mean = float(values.mean()) if len(values) else 0.0
        return mean, mean
    result = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(INTERVAL_SEED),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def intervals(
    lists: Mapping[str, Mapping[int, Sequence[int]]],
    targets: Mapping[int, set[int]],
    reference: str,
) -> dict[str, dict[str, list[float]]]:
    """Per method and metric of INTERVAL_METRICS: the interval of its mean and of its paired
    difference from `reference` (keys `hr@5` and `hr@5 - <reference>`)."""
    values = {
        method: {m: per_customer(shown, targets, m) for m in INTERVAL_METRICS}
        for method, shown in lists.items()
    }
    out: dict[str, dict[str, list[float]]] = {}
    for method, by_metric in values.items():
        out[method] = {}
        for metric, own in by_metric.items():
            out[method][metric] = list(interval(own))
            if reference in values and method != reference:
                difference = own - values[reference][metric]
                out[method][f"{metric} - {reference}"] = list(interval(difference))
    return out

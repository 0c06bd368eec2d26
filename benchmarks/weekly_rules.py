"""Weekly table speed under several ranking rules, measured side by side in one run."""

import time

import numpy as np

CHUNK = 2_000
REPEATS = 2


def compare(frames, trained, week, rules: dict) -> dict:
    """Prepare and score the week's table for every customer with each rule (`WeeklyScorer`,
    what the weekly_top5 asset runs), alternating, REPEATS times each, in chunks of CHUNK
    customers. Returns the customers, and per rule the mean customers scored per second
    (`score` alone) and the mean seconds `prepare` took."""
    from contoso_recs.recommender.weekly import WeeklyScorer

    speed: dict[str, list[float]] = {name: [] for name in rules}
    prepare: dict[str, list[float]] = {name: [] for name in rules}
    customers = 0
    for _ in range(REPEATS):
        for name, rule in rules.items():
            started = time.perf_counter()
            scorer = WeeklyScorer.prepare(frames, trained, week, rule)
            prepare[name].append(time.perf_counter() - started)
            customers = len(scorer.customer_ids)
            started = time.perf_counter()
            for first in range(0, customers, CHUNK):
                scorer.score(np.arange(first, min(first + CHUNK, customers)))
            speed[name].append(customers / (time.perf_counter() - started))
    return {
        "customers": customers,
        "customers_per_second": {name: float(np.mean(v)) for name, v in speed.items()},
        "prepare_seconds": {name: float(np.mean(v)) for name, v in prepare.items()},
    }

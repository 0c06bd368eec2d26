"""A hand-built serving bundle whose answers can be worked out on paper.

Five products on the unit circle and two customers:

    p1 (1, 0)   p2 (0.8, 0.6)   p3 (0, 1)   p4 (-1, 0)   p5 (0.28, 0.96)
    c1 (0, 1), bought p5        c2 (1, 0), bought nothing

Recent buyers: p1 1, p2 5, p3 3, p4 10, p5 0 (so the popular order is p4, p2, p3, p1, p5).
"""

from pathlib import Path

import numpy as np

from contoso_recs.serving.bundle import Policy, publish, write_bundle

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

"""Batch top-k scoring: exact answers on hand-built cases, exclusions, chunking and recall."""

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from contoso_recs.recommender.batch_scoring import iter_top_k, prepare_products, top_k

PRODUCTS = np.array(
    [
        [1.0, 0.0, 0.0],
        [0.8, 0.6, 0.0],
        [0.6, 0.8, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.5, 0.75**0.5],
        [-1.0, 0.0, 0.0],
    ],
    dtype=np.float32,
)
CUSTOMERS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.8]], dtype=np.float32)


def clustered(n: int, d: int, seed: int, centres: int = 50) -> np.ndarray:
    """Unit vectors around shared Gaussian centres: near-ties at the top, as in real catalogues."""
    rng = np.random.default_rng(seed)
    centre = np.random.default_rng(12345).standard_normal((centres, d))
    x = centre[rng.integers(0, centres, n)] + 0.4 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(a) & set(b)) for a, b in zip(found, truth, strict=True)]
    return sum(hits) / truth.size


def test_hand_built_top_3_is_exact() -> None:
    indices, scores = top_k(CUSTOMERS, PRODUCTS, k=3)

    assert indices.dtype == np.int32 and scores.dtype == np.float32
    assert indices.tolist() == [[0, 1, 2], [3, 2, 1], [4, 0, 1]]
    expected = [[1.0, 0.8, 0.6], [1.0, 0.8, 0.6], [0.8 * 0.75**0.5, 0.6, 0.48]]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_hand_built_top_5_is_exact() -> None:
    customers = np.array([[0.6, 0.0, 0.8], [0.6, 0.8, 0.0]], dtype=np.float32)

    indices, scores = top_k(customers, PRODUCTS, k=5)

    # by hand: (0.6, 0, 0.8) scores 0.6, 0.48, 0.36, 0, 0.8 * sqrt(0.75), -0.6;
    # (0.6, 0.8, 0) scores 0.6, 0.96, 1.0, 0.8, 0.4, -0.6
    assert indices.tolist() == [[4, 0, 1, 2, 3], [2, 1, 3, 0, 4]]
    expected = [[0.8 * 0.75**0.5, 0.6, 0.48, 0.36, 0.0], [1.0, 0.96, 0.8, 0.6, 0.4]]
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-7)


def test_k_beyond_the_allowed_products_pads_with_minus_one_and_minus_inf() -> None:
    discontinued = np.array([False, True, False, True, True, True])

    indices, scores = top_k(CUSTOMERS[:1], PRODUCTS, k=4, exclude=discontinued)

    assert indices.tolist() == [[0, 2, -1, -1]]
    assert scores[0, :2] == pytest.approx([1.0, 0.6])
    assert np.isneginf(scores[0, 2:]).all()


def test_k_beyond_the_whole_catalogue_pads() -> None:
    indices, scores = top_k(CUSTOMERS, PRODUCTS, k=300)

    assert indices.shape == (3, 300)
    assert (np.sort(indices[:, :6], axis=1) == np.arange(6)).all()
    assert (indices[:, 6:] == -1).all() and np.isneginf(scores[:, 6:]).all()


def test_per_customer_exclusions_as_csr_tuple_and_scipy_agree() -> None:
    excluded = [[0], [3, 2], []]
    indptr = np.cumsum([0] + [len(e) for e in excluded])
    indices = np.array([p for e in excluded for p in e])
    matrix = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(3, 6))

    from_tuple = top_k(CUSTOMERS, PRODUCTS, k=2, exclude=(indptr, indices))
    from_scipy = top_k(CUSTOMERS, PRODUCTS, k=2, exclude=matrix)

    assert from_tuple[0].tolist() == [[1, 2], [1, 4], [4, 0]]
    np.testing.assert_array_equal(from_tuple[0], from_scipy[0])
    np.testing.assert_array_equal(from_tuple[1], from_scipy[1])


def test_exclusions_are_honoured_at_scale() -> None:
    customers, products = clustered(600, 32, seed=1), clustered(3000, 32, seed=2)
    scores = customers @ products.T
    rng = np.random.default_rng(3)
    # Each customer excludes its own 3 best products and 40 random ones.
    rows = [
        np.unique(np.r_[exact_top_k(scores[i : i + 1], 3)[0], rng.integers(0, 3000, 40)])
        for i in range(len(customers))
    ]
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.concatenate(rows)
    discontinued = np.zeros(3000, dtype=bool)
    discontinued[rng.choice(3000, 300, replace=False)] = True

    found, found_scores = top_k(
        customers, products, exclude=(indptr, indices), exclude_for_all=discontinued
    )

    masked = scores.copy()
    masked[np.repeat(np.arange(len(customers)), np.diff(indptr)), indices] = -np.inf
    masked[:, discontinued] = -np.inf
    for i, row in enumerate(found):
        assert not set(row) & set(rows[i])
    assert not discontinued[found].any()
    assert recall(found, exact_top_k(masked, 5)) >= 0.99
    np.testing.assert_allclose(found_scores, np.take_along_axis(scores, found, 1), atol=1e-5)


def test_an_empty_catalogue_gives_only_padding() -> None:
    indices, scores = top_k(CUSTOMERS, PRODUCTS, k=2, exclude=np.ones(6, dtype=bool))

    assert (indices == -1).all() and np.isneginf(scores).all()


def test_chunked_equals_unchunked() -> None:
    customers, products = clustered(700, 64, seed=4), clustered(2500, 64, seed=5)
    prepared = prepare_products(products)

    whole = top_k(customers, prepared, chunk_rows=700, num_threads=1)
    for chunk_rows, threads in [(1, 2), (37, 2), (256, 1)]:
        chunked = top_k(customers[:700], prepared, chunk_rows=chunk_rows, num_threads=threads)
        np.testing.assert_array_equal(chunked[0], whole[0])
        np.testing.assert_array_equal(chunked[1], whole[1])


def test_mini_batches_equal_one_call() -> None:
    customers, products = clustered(300, 16, seed=6), clustered(900, 16, seed=7)
    excluded = sp.random(300, 900, density=0.02, format="csr", random_state=8)

    whole = top_k(customers, products, k=4, exclude=excluded)
    batches = [(customers[a : a + 128], excluded[a : a + 128]) for a in range(0, 300, 128)]
    parts = list(iter_top_k(batches, products, k=4))

    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole[0])
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole[1])
    plain = list(iter_top_k(iter([CUSTOMERS[:2], CUSTOMERS[2:]]), PRODUCTS, k=3))
    assert np.concatenate([p[0] for p in plain]).tolist() == [[0, 1, 2], [3, 2, 1], [4, 0, 1]]


def test_recall_at_5_against_exact_fp32() -> None:
    customers, products = clustered(5000, 64, seed=9), clustered(3000, 64, seed=10)

    indices, scores = top_k(customers, products, k=5)

    exact = customers @ products.T
    assert recall(indices, exact_top_k(exact, 5)) >= 0.99
    assert (np.diff(scores, axis=1) <= 0).all()
    np.testing.assert_allclose(scores, np.take_along_axis(exact, indices, 1), atol=1e-5)


def test_the_callers_torch_threads_are_left_alone() -> None:
    before = torch.get_num_threads()
    top_k(CUSTOMERS, PRODUCTS, k=1, num_threads=2)
    assert torch.get_num_threads() == before


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        top_k(np.full((2, 3), np.nan, dtype=np.float32), PRODUCTS)
    with pytest.raises(ValueError, match="dim"):
        top_k(np.zeros((2, 4), dtype=np.float32), PRODUCTS)
    with pytest.raises(TypeError, match="CSR"):
        top_k(CUSTOMERS, PRODUCTS, exclude=np.array([1, 2]))
    with pytest.raises(ValueError, match="positions"):
        top_k(CUSTOMERS, PRODUCTS, exclude=(np.array([0, 1, 1, 1]), np.array([6])))


def test_the_module_imports_no_dagster() -> None:
    code = (
        "import sys, contoso_recs.recommender.batch_scoring; "
        "sys.exit('dagster' in ' '.join(sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

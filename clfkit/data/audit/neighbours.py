"""Nearest neighbours between two sets of vectors by a blocked matrix product.

Similarities are computed a block of queries against a block of references at a time
(``QUERY_BLOCK`` x ``REF_BLOCK`` float32: 32 MiB), so memory stays flat and BLAS does the work:
50,000 x 10,000 64-bit hashes is one 64 GFLOP product, seconds on two cores; there is no Python
loop over pairs. Perceptual hashes become +-1 vectors, whose dot product is 64 - 2 x Hamming
distance; model features are L2-normalised, whose dot product is the cosine similarity.
"""

from __future__ import annotations

import numpy as np

QUERY_BLOCK = 1024
REF_BLOCK = 8192


def hash_vectors(hashes: np.ndarray) -> np.ndarray:
    """64-bit hashes (uint64, N) -> (N, 64) float32 of +-1, one per bit."""
    bits = np.unpackbits(hashes.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
    return bits.astype(np.float32) * 2 - 1


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero): dot products become cosines."""
    f = np.asarray(features, dtype=np.float32)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.maximum(norm, 1e-12)


def _keep_best(q: np.ndarray, r: np.ndarray, s: np.ndarray, per_query: int) -> tuple:
    """At most ``per_query`` pairs per query, the most similar (a set of near-identical images,
    e.g. blank ones, would otherwise give n^2 pairs)."""
    order = np.lexsort((-s, q))
    q, r, s = q[order], r[order], s[order]
    start = np.searchsorted(q, q, side="left")
    keep = np.arange(len(q)) - start < per_query
    return q[keep], r[keep], s[keep]


def pairs_above(
    query: np.ndarray, ref: np.ndarray, min_similarity: float, per_query: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query rows, reference rows, similarity) of every pair whose dot product is at least
    ``min_similarity``, at most ``per_query`` per query row (the most similar)."""
    found_q, found_r, found_s = [], [], []
    for i in range(0, len(query), QUERY_BLOCK):
        q = query[i : i + QUERY_BLOCK]
        for j in range(0, len(ref), REF_BLOCK):
            sim = q @ ref[j : j + REF_BLOCK].T
            # 1-D flatnonzero, then divmod: 2-D nonzero costs ~100x more on a sparse block
            rows, cols = np.divmod(np.flatnonzero(sim >= min_similarity), sim.shape[1])
            if len(rows) > per_query * len(q):  # many: keep each row's best now, memory stays flat
                rows, cols, _ = _keep_best(rows, cols, sim[rows, cols], per_query)
            found_q.append(rows + i)
            found_r.append(cols + j)
            found_s.append(sim[rows, cols])
    if not found_q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return _keep_best(np.concatenate(found_q), np.concatenate(found_r), np.concatenate(found_s), per_query)


def nearest(query: np.ndarray, ref: np.ndarray, skip_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(index of the most similar reference row, its similarity) for every query row.
    ``skip_self``: query and ref are the same set and a row is not its own neighbour."""
    best_i = np.full(len(query), -1, np.int64)
    best_s = np.full(len(query), -np.inf, np.float32)
    for i in range(0, len(query), QUERY_BLOCK):
        q = query[i : i + QUERY_BLOCK]
        for j in range(0, len(ref), REF_BLOCK):
            sim = q @ ref[j : j + REF_BLOCK].T
            if skip_self:
                rows = np.arange(len(q))
                cols = rows + i - j
                inside = (cols >= 0) & (cols < sim.shape[1])
                sim[rows[inside], cols[inside]] = -np.inf
            k = sim.argmax(1)
            s = sim[np.arange(len(q)), k]
            better = s > best_s[i : i + len(q)]
            best_i[i : i + len(q)][better] = k[better] + j
            best_s[i : i + len(q)][better] = s[better]
    return best_i, best_s

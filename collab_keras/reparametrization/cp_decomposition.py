"""Implicit CP decomposition of the key/query tensor of multi-head attention.

For head `h` the attention logits are `x^T T[:, h, :] y` with
`T[:, h, :] = Wq_h Wk_h^T` (query bias terms aside). A collaborative layer with
shared key size `R` computes `sum_r A[:, r] M[h, r] B[:, r]^T`, so converting a
layer is the rank-`R` CP decomposition `T ~= [[A, M, B]]`.

`T` (`d_q x H x d_k`) is never formed. Every slice has rank `key_dim`, so the
three matricized-tensor-times-Khatri-Rao products (MTTKRP) an ALS sweep needs
are contractions of the heads' own projections with the factors, and the
residual norm follows from Gram matrices. One sweep costs
`O((d_q + d_k) * H * key_dim * R)` instead of `O(d_q * H * d_k * R)`.
"""

import numpy as np

from collab_keras.argument_checks import check_float
from collab_keras.argument_checks import check_integer


def cp_decompose_heads(
    query_kernel,
    key_kernel,
    rank,
    query_metric=None,
    key_metric=None,
    method="als",
    max_iterations=100,
    tolerance=1e-6,
    seed=None,
    initial=None,
):
    """Rank-`rank` CP decomposition of `T[:, h, :] = Wq_h Wk_h^T`.

    With `method="als"` the factors start from the leading eigenvectors of
    the mode-0 and mode-2 Gram matrices of `T` (computed from the
    projections: an "SVD" start), the mixing matrix from its least-squares
    optimum for them, and are refined by alternating least squares (ALS) in
    float64 on the implicit tensor. `method="parafac"` is the reference
    method of the paper's code: `tensorly.decomposition.parafac` with a
    random start on the dense tensor (needs `tensorly`; slow). When
    `rank >= H * key_dim` the concatenated solution is returned: it is exact.

    With metrics `Lq` and `Lk` the decomposition minimizes
    `sum_h ||Lq^T (T_h - T_hat_h) Lk||_F^2` instead of the plain Frobenius
    error; for `Lq Lq^T = E[x x^T]` over queries and `Lk Lk^T` the
    covariance of keys this is the mean squared error of the attention
    logits (see `logit_metrics`).

    Args:
        query_kernel: array of shape `(d_q, H, key_dim)`, the query
            projections `Wq_h`.
        key_kernel: array of shape `(d_k, H, key_dim)`, the key projections.
        rank: positive integer, the shared key size `R`.
        query_metric: optional invertible `(d_q, d_q)` matrix `Lq`.
        key_metric: optional invertible `(d_k, d_k)` matrix `Lk`.
        method: `"als"` or `"parafac"`.
        max_iterations: maximum number of ALS sweeps.
        tolerance: stop when the relative error improves by less than this
            between two sweeps.
        seed: integer seed for the random numbers (random start of
            `"parafac"`, extra columns of `"als"` when `rank` exceeds the
            input size); the result is deterministic for a seed.
        initial: optional `(query_factor, mixing, key_factor)` to start
            `"als"` from instead of the SVD start (a warm start: the
            factors of a nearby problem, e.g. other metrics).

    Returns:
        A tuple `(query_factor, mixing, key_factor, info)`: arrays of shapes
        `(d_q, R)`, `(H, R)` and `(d_k, R)` such that
        `T[:, h, :] ~= query_factor @ diag(mixing[h]) @ key_factor.T`, and a
        dict with `"relative_error"` (`||T - T_hat|| / ||T||`, Frobenius),
        `"weighted_relative_error"` (the same under the metrics; equal to
        it without them) and `"iterations"`.
    """
    wq = np.asarray(query_kernel, dtype="float64")  # (d_q, H, dk)
    wk = np.asarray(key_kernel, dtype="float64")  # (d_k, H, dk)
    if wq.ndim != 3 or wk.ndim != 3 or wq.shape[1:] != wk.shape[1:]:
        raise ValueError(
            "`query_kernel` and `key_kernel` must have shapes "
            "(d_q, heads, key_dim) and (d_k, heads, key_dim). Received: "
            f"query_kernel.shape={wq.shape}, key_kernel.shape={wk.shape}"
        )
    for name, kernel in (("query_kernel", wq), ("key_kernel", wk)):
        check_finite(
            kernel,
            f"`{name}` must be finite; a decomposition of NaN or Inf weights "
            "has no meaning.",
            name,
        )
    rank = check_integer("rank", rank)
    if method not in ("als", "parafac"):
        raise ValueError(
            f"`method` must be 'als' or 'parafac'. Received: method={method!r}"
        )
    max_iterations = check_integer("max_iterations", max_iterations)
    tolerance = check_float("tolerance", tolerance)
    heads, key_dim = wq.shape[1:]
    if rank >= heads * key_dim:
        a, m, b = _concatenated_solution(wq, wk, rank)
        info = {
            "relative_error": 0.0,
            "weighted_relative_error": 0.0,
            "iterations": 0,
        }
        return a, m, b, info

    lq = _metric(query_metric, wq.shape[0], "query_metric")
    lk = _metric(key_metric, wk.shape[0], "key_metric")
    # Lq^T T_h Lk = (Lq^T Wq_h)(Lk^T Wk_h)^T: a problem of the same form.
    wq_weighted = np.tensordot(lq, wq, axes=(0, 0))  # (d_q, H, dk)
    wk_weighted = np.tensordot(lk, wk, axes=(0, 0))  # (d_k, H, dk)
    if method == "als":
        start = None
        if initial is not None:
            start = (lq.T @ np.asarray(initial[0]), lk.T @ np.asarray(initial[2]))
        a, m, b, iterations = _als(
            wq_weighted, wk_weighted, rank, max_iterations, tolerance, seed,
            start,
        )
    else:
        a, m, b, iterations = _parafac(
            wq_weighted, wk_weighted, rank, max_iterations, tolerance, seed
        )
    weighted_error = _relative_error(wq_weighted, wk_weighted, a, m, b)
    a = np.linalg.solve(lq.T, a)  # (d_q, R)
    b = np.linalg.solve(lk.T, b)  # (d_k, R)
    a, m, b = _balance(a, m, b)
    info = {
        "relative_error": _relative_error(wq, wk, a, m, b),
        "weighted_relative_error": weighted_error,
        "iterations": iterations,
    }
    return a, m, b, info


def check_finite(array, requirement, received):
    """Raises `ValueError("<requirement> Received: <received> with <n> NaN
    or Inf values of <size>")` when `array` is not all finite."""
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(
            f"{requirement} Received: {received} with {bad} NaN or Inf "
            f"values of {np.size(array)}"
        )


def weighted_relative_error(
    query_kernel, key_kernel, factors, query_metric=None, key_metric=None
):
    """`||Lq^T (T - T_hat) Lk|| / ||Lq^T T Lk||` for CP `factors`.

    The error of `cp_decompose_heads`'s `"weighted_relative_error"`, for
    any metrics: `reparametrize` scores a decomposition on held-out
    activations with it.

    Args:
        query_kernel: array `(d_q, H, key_dim)`.
        key_kernel: array `(d_k, H, key_dim)`.
        factors: `(query_factor, mixing, key_factor)` as returned by
            `cp_decompose_heads`.
        query_metric: optional `(d_q, d_q)` matrix `Lq` (identity if None).
        key_metric: optional `(d_k, d_k)` matrix `Lk`.

    Returns:
        A float.
    """
    wq = np.asarray(query_kernel, dtype="float64")
    wk = np.asarray(key_kernel, dtype="float64")
    lq = _metric(query_metric, wq.shape[0], "query_metric")
    lk = _metric(key_metric, wk.shape[0], "key_metric")
    a, m, b = (np.asarray(f, dtype="float64") for f in factors)
    return _relative_error(
        np.tensordot(lq, wq, axes=(0, 0)),
        np.tensordot(lk, wk, axes=(0, 0)),
        lq.T @ a,
        m,
        lk.T @ b,
    )


def _als(wq, wk, rank, max_iterations, tolerance, seed, start=None):
    """Implicit ALS from an SVD start (or from `start`, factors `(a, b)`);
    returns `(a, m, b, iterations)`."""
    d_q, heads, key_dim = wq.shape
    d_k = wk.shape[0]
    wq_flat = wq.reshape(d_q, heads * key_dim)  # (d_q, H * dk)
    wk_flat = wk.reshape(d_k, heads * key_dim)  # (d_k, H * dk)
    gram_q, gram_k, norm_t_sq = _head_grams(wq, wk)
    norm_t = np.sqrt(norm_t_sq)

    rng = np.random.default_rng(seed)
    # Mode-0 Gram of T: sum_h Wq_h (Wk_h^T Wk_h) Wq_h^T; likewise for mode 2.
    if start is None:
        a = _leading_eigenvectors(wq_flat @ _per_head(gram_k, wq), rank, rng)
        b = _leading_eigenvectors(wk_flat @ _per_head(gram_q, wk), rank, rng)
    else:
        a, b = start

    relative_error = np.inf
    proj_q = (wq_flat.T @ a).reshape(heads, key_dim, rank)  # Wq_h^T A
    gram_a = a.T @ a  # (R, R)
    for iterations in range(1, max_iterations + 1):
        proj_k = (wk_flat.T @ b).reshape(heads, key_dim, rank)  # Wk_h^T B
        gram_b = b.T @ b
        # Mode 1: X1[h, r] = a_r^T T_h b_r.
        mttkrp = np.einsum("hkr,hkr->hr", proj_q, proj_k)  # (H, R)
        m = _solve_gram(mttkrp, gram_a * gram_b)
        gram_m = m.T @ m
        # Mode 0: X0[:, r] = sum_h M[h, r] Wq_h Wk_h^T b_r.
        mttkrp = wq_flat @ (proj_k * m[:, None, :]).reshape(-1, rank)
        a = _solve_gram(mttkrp, gram_m * gram_b)  # (d_q, R)
        proj_q = (wq_flat.T @ a).reshape(heads, key_dim, rank)
        gram_a = a.T @ a
        # Mode 2: X2[:, r] = sum_h M[h, r] Wk_h Wq_h^T a_r.
        mttkrp = wk_flat @ (proj_q * m[:, None, :]).reshape(-1, rank)
        gram = gram_a * gram_m
        b = _solve_gram(mttkrp, gram)  # (d_k, R)
        # ||T - T_hat||^2 = ||T||^2 - 2 <T, T_hat> + ||T_hat||^2.
        inner = np.sum(mttkrp * b)
        norm_hat_sq = np.sum(gram * (b.T @ b))
        residual_sq = max(norm_t**2 - 2.0 * inner + norm_hat_sq, 0.0)
        new_error = np.sqrt(residual_sq) / norm_t
        converged = relative_error - new_error < tolerance
        relative_error = new_error
        if converged:
            break

    return a, m, b, iterations


def _parafac(wq, wk, rank, max_iterations, tolerance, seed):
    """The reference: tensorly's parafac, random start, on the dense T."""
    try:
        from tensorly.decomposition import parafac
    except ImportError as error:
        raise ImportError(
            "`method='parafac'` requires tensorly: `pip install tensorly`."
        ) from error
    dense = np.einsum("ihk,jhk->ihj", wq, wk)  # (d_q, H, d_k)
    (weights, (a, m, b)), errors = parafac(
        dense,
        rank=rank,
        init="random",
        n_iter_max=max_iterations,
        tol=tolerance,
        random_state=seed,
        return_errors=True,
    )
    return a * weights, m, b, len(errors)


def _relative_error(wq, wk, a, m, b):
    """`||T - [[a, m, b]]|| / ||T||` without forming `T`."""
    heads, key_dim = wq.shape[1:]
    proj_q = (wq.reshape(len(wq), -1).T @ a).reshape(heads, key_dim, -1)
    proj_k = (wk.reshape(len(wk), -1).T @ b).reshape(heads, key_dim, -1)
    _, _, norm_t_sq = _head_grams(wq, wk)
    inner = np.sum(np.einsum("hkr,hkr->hr", proj_q, proj_k) * m)
    norm_hat_sq = np.sum((a.T @ a) * (m.T @ m) * (b.T @ b))
    residual_sq = max(norm_t_sq - 2.0 * inner + norm_hat_sq, 0.0)
    return float(np.sqrt(residual_sq / norm_t_sq))


def _head_grams(wq, wk):
    """Per-head Grams `Wq_h^T Wq_h`, `Wk_h^T Wk_h` (H, dk, dk); `||T||^2`."""
    gram_q = np.einsum("ihk,ihl->hkl", wq, wq)
    gram_k = np.einsum("jhk,jhl->hkl", wk, wk)
    # ||T||^2 = sum_h tr(Wq_h^T Wq_h Wk_h^T Wk_h).
    return gram_q, gram_k, np.einsum("hkl,hlk->", gram_q, gram_k)


def _metric(matrix, size, name):
    """The identity, or `matrix` checked to be `(size, size)`."""
    if matrix is None:
        return np.eye(size)
    matrix = np.asarray(matrix, dtype="float64")
    if matrix.shape != (size, size):
        raise ValueError(
            f"`{name}` must have shape {(size, size)}. "
            f"Received: {name}.shape={matrix.shape}"
        )
    return matrix


def _concatenated_solution(wq, wk, rank):
    """Exact factors: heads' projections side by side, block one-hot mixing."""
    d_q, heads, key_dim = wq.shape
    full = heads * key_dim
    a = np.zeros((d_q, rank))
    b = np.zeros((wk.shape[0], rank))
    m = np.zeros((heads, rank))
    a[:, :full] = wq.reshape(d_q, full)
    b[:, :full] = wk.reshape(wk.shape[0], full)
    # Head h owns columns h * key_dim .. (h + 1) * key_dim - 1.
    m[:, :full] = np.repeat(np.eye(heads), key_dim, axis=1)
    return a, m, b


def _per_head(gram, kernel):
    """Stack `gram[h] @ kernel[:, h, :].T` over heads: `(H * dk, d)`."""
    heads, key_dim, _ = gram.shape
    stacked = np.matmul(gram, kernel.transpose(1, 2, 0))  # (H, dk, d)
    return stacked.reshape(heads * key_dim, -1)


def _leading_eigenvectors(gram, rank, rng):
    """Orthonormal leading eigenvectors; random columns beyond `size`."""
    size = gram.shape[0]
    _, vectors = np.linalg.eigh(gram)  # ascending eigenvalues
    vectors = vectors[:, ::-1][:, :rank]
    if rank > size:
        extra = rng.standard_normal((size, rank - size)) / np.sqrt(size)
        vectors = np.concatenate([vectors, extra], axis=1)
    return vectors


def _solve_gram(mttkrp, gram):
    """Least-squares factor update `mttkrp @ pinv(gram)`, `gram` symmetric.

    An explicit inverse times `mttkrp`: for these `R x R` Grams with
    hundreds of right-hand sides, a third faster than `np.linalg.solve`.
    """
    ridge = 1e-12 * np.trace(gram) / gram.shape[0]
    return mttkrp @ np.linalg.inv(gram + ridge * np.eye(gram.shape[0]))


def _balance(a, m, b):
    """Give the three factors of each rank-one term equal column norms."""
    norms = [np.linalg.norm(f, axis=0) for f in (a, m, b)]
    scale = np.cbrt(norms[0] * norms[1] * norms[2])
    factors = []
    for factor, norm in zip((a, m, b), norms):
        safe = np.where(norm > 0, norm, 1.0)
        factors.append(factor * (scale / safe))
    return tuple(factors)

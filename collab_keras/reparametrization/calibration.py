"""Activation statistics for data-aware reparametrization."""

import numpy as np


class LogitStatistics:
    """Second moments of the activations reaching one attention layer.

    The logit error of head `h` for a query `x` and a key `y` is
    `x^T (T_h - T_hat_h) y`. Softmax ignores what is constant along the keys
    of a query, so only the part that varies with `y` matters: the keys are
    centered per sequence. Treating queries and keys as independent, the
    mean squared logit error over the data is
    `sum_h tr((T_h - T_hat_h)^T Sq (T_h - T_hat_h) Sk)` with `Sq = E[x x^T]`
    over queries and `Sk` the covariance of keys. `metrics()` returns `Lq`,
    `Lk` with `Lq Lq^T = Sq`, `Lk Lk^T = Sk` (plus a ridge), the arguments
    `query_metric` and `key_metric` of `cp_decompose_heads`.

    Positions that the attention mask excludes are left out: a key that no
    query attends to, a query that attends to nothing and, in
    self-attention, a padded query.

    Args:
        query_dim: feature size of the queries.
        key_dim: feature size of the keys.

    Example:

    ```python
    statistics = LogitStatistics(384, 384)
    statistics.update(x, x, self_attention=True)  # x: (batch, length, 384)
    query_metric, key_metric = statistics.metrics()
    ```
    """

    def __init__(self, query_dim, key_dim):
        self.query_dim = query_dim
        self.key_dim = key_dim
        self._query_moment = np.zeros((query_dim, query_dim))
        self._key_moment = np.zeros((key_dim, key_dim))
        self._query_count = 0.0
        self._key_count = 0.0

    def update(self, query, key, attention_mask=None, self_attention=False):
        """Adds a batch of activations.

        Args:
            query: array of shape `(batch, T, query_dim)` (more position
                axes are flattened).
            key: array of shape `(batch, S, key_dim)`.
            attention_mask: optional boolean array `(batch, T, S)`, `True`
                where a query attends to a key.
            self_attention: whether `query` and `key` are the same
                positions, so that padded keys also mark padded queries.
        """
        query = np.asarray(query, dtype="float64")
        key = np.asarray(key, dtype="float64")
        if query.ndim < 2 or query.shape[-1] != self.query_dim:
            raise ValueError(
                "Query activations must have shape (batch, ..., "
                f"{self.query_dim}). Received: query.shape={query.shape}"
            )
        if key.ndim < 2 or key.shape[-1] != self.key_dim:
            raise ValueError(
                "Key activations must have shape (batch, ..., "
                f"{self.key_dim}). Received: key.shape={key.shape}"
            )
        for name, array in (("query", query), ("key", key)):
            if not np.isfinite(array).all():
                raise ValueError(
                    f"`calibration_data` must be finite; the {name} "
                    "activations hold NaN or Inf. Received: "
                    f"{int(np.size(array) - np.isfinite(array).sum())} "
                    f"non-finite values in {name} activations of shape "
                    f"{array.shape}"
                )
        if query.size == 0 or key.size == 0:
            return  # nothing to record; `metrics()` raises if nothing was
        if query.ndim == 2:  # a single sequence
            query, key = query[None], key[None]
        query = query.reshape(len(query), -1, self.query_dim)  # (B, T, dq)
        key = key.reshape(len(key), -1, self.key_dim)  # (B, S, dk)
        query_valid = np.ones(query.shape[:2])
        key_valid = np.ones(key.shape[:2])
        if attention_mask is not None and np.ndim(attention_mask) in (3, 4):
            attention_mask = np.asarray(attention_mask, dtype=bool)
            if attention_mask.ndim == 4:  # (B, 1|N, T, S): any head
                attention_mask = attention_mask.any(axis=1)
            mask = np.broadcast_to(
                attention_mask,
                (len(query), query.shape[1], key.shape[1]),
            )
            query_valid = mask.any(axis=-1).astype("float64")  # (B, T)
            key_valid = mask.any(axis=-2).astype("float64")  # (B, S)
            if self_attention and query_valid.shape == key_valid.shape:
                query_valid = query_valid * key_valid

        weighted = query * query_valid[..., None]
        self._query_moment += np.einsum("bti,btj->ij", weighted, query)
        self._query_count += query_valid.sum()
        # Center each sequence's keys on its valid positions.
        count = np.maximum(key_valid.sum(axis=1), 1.0)  # (B,)
        mean = np.einsum("bs,bsj->bj", key_valid, key) / count[:, None]
        centered = (key - mean[:, None, :]) * key_valid[..., None]
        self._key_moment += np.einsum("bsi,bsj->ij", centered, centered)
        self._key_count += key_valid.sum()

    def metrics(self, ridge=1e-2):
        """Cholesky factors of the (regularized) moments.

        Args:
            ridge: added to each moment as `ridge * trace / size` times the
                identity, so that directions the data never visits keep a
                small weight and the factors stay invertible.

        Returns:
            A tuple `(query_metric, key_metric)` of lower-triangular arrays
            of shapes `(query_dim, query_dim)` and `(key_dim, key_dim)`.
        """
        if self._query_count == 0 or self._key_count == 0:
            raise ValueError(
                "`calibration_data` recorded no activations (an empty batch, "
                "or every position masked). Received: "
                f"{self._query_count:.0f} query and {self._key_count:.0f} "
                "key positions"
            )
        factors = []
        for name, moment, count in (
            ("query", self._query_moment, self._query_count),
            ("key", self._key_moment, self._key_count),
        ):
            moment = moment / count
            if not np.trace(moment) > 0:
                raise ValueError(
                    f"`calibration_data` gives {name} activations with no "
                    "variation to weigh the decomposition by (all zeros, "
                    "or keys from a single position per sequence, which "
                    "softmax ignores). Received: calibration_data with "
                    f"{count:.0f} {name} positions and a second moment "
                    f"of trace {np.trace(moment):.3g}"
                )
            size = len(moment)
            floor = ridge * np.trace(moment) / size
            factors.append(np.linalg.cholesky(moment + floor * np.eye(size)))
        return tuple(factors)

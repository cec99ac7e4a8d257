"""Activation statistics for data-aware reparametrization."""

import numpy as np

from collab_keras.reparametrization.cp_decomposition import check_finite

# Sequences and tokens below which a data-aware fit is said to be unreliable
# (`HeldOutStatistics.shortfall`).
MIN_CALIBRATION_SEQUENCES = 32


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
        # Sums over sequences j of ||M_j||^2, M_j = sum_{t in j} x_t x_t^T,
        # and the number of sequences: the Ledoit-Wolf shrinkage's estimate
        # of how noisy the moments are (positions of one sequence are not
        # independent, sequences are).
        self._query_blocks = 0.0
        self._key_blocks = 0.0
        self._sequences = 0.0

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
            check_finite(
                array,
                "`calibration_data` must be finite.",
                f"calibration_data giving {name} activations of shape "
                f"{array.shape}",
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
        # ||M_j||^2 = sum_{t, s} (x_t . x_s)^2 over valid positions.
        self._query_blocks += np.sum(
            np.einsum("bti,bsi->bts", weighted, weighted) ** 2
        )
        self._sequences += np.sum(query_valid.sum(1) > 0)
        # Center each sequence's keys on its valid positions.
        count = np.maximum(key_valid.sum(axis=1), 1.0)  # (B,)
        mean = np.einsum("bs,bsj->bj", key_valid, key) / count[:, None]
        centered = (key - mean[:, None, :]) * key_valid[..., None]
        self._key_moment += np.einsum("bsi,bsj->ij", centered, centered)
        self._key_count += key_valid.sum()
        self._key_blocks += np.sum(
            np.einsum("bti,bsi->bts", centered, centered) ** 2
        )

    @property
    def num_tokens(self):
        """Query positions recorded so far (masked ones left out)."""
        return int(self._query_count)

    def merged(self, other):
        """New statistics holding the activations of `self` and `other`."""
        merged = LogitStatistics(self.query_dim, self.key_dim)
        for x in (self, other):
            merged._query_moment += x._query_moment
            merged._key_moment += x._key_moment
            merged._query_count += x._query_count
            merged._key_count += x._key_count
            merged._query_blocks += x._query_blocks
            merged._key_blocks += x._key_blocks
            merged._sequences += x._sequences
        return merged

    def metrics(self, ridge=1e-2, shrink=True):
        """Cholesky factors of the (regularized) moments.

        Each moment `S` (`size x size`, from `n` positions) is shrunk
        towards `mu I`, `mu = trace(S) / size`, the metric under which the
        data-aware fit is the tensor-only one: `(1 - rho) S + rho mu I`
        with the Ledoit-Wolf intensity `rho = min(1, b^2 / d^2)` (Ledoit
        and Wolf, 2004), `d^2 = ||S - mu I||^2` and
        `b^2 = sum_j ||Y_j - S||^2 / N^2` over the `N` sequences, `Y_j` the
        moment of sequence `j` scaled by `N / n` (positions of one sequence
        are not independent samples, sequences are). Few sequences give a
        noisy `S` and `rho` near 1: the fit leans on the weights, not on
        the handful of activations it would otherwise overfit.

        Args:
            ridge: added to each moment as `ridge * trace / size` times the
                identity, so that directions the data never visits keep a
                small weight and the factors stay invertible.
            shrink: whether to apply the Ledoit-Wolf shrinkage.

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
        for name, moment, count, blocks in (
            ("query", self._query_moment, self._query_count, self._query_blocks),
            ("key", self._key_moment, self._key_count, self._key_blocks),
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
            if shrink:
                moment = _shrunk(moment, blocks, count, self._sequences)
            floor = ridge * np.trace(moment) / size
            factors.append(np.linalg.cholesky(moment + floor * np.eye(size)))
        return tuple(factors)


class HeldOutStatistics:
    """`LogitStatistics` of calibration data split into a fit part and a
    held-out part, by sequence.

    `reparametrize` fits the data-aware decomposition on `fit`, compares it
    with the tensor-only one on `held_out` and keeps, per layer, whichever
    has the lower held-out logit error (refitting a data-aware winner on all
    the data): a handful of sequences, whose activations a fit can overfit,
    then cannot make a layer worse than no calibration. About a quarter of
    the sequences, spread evenly over the data, are held out; with a single
    sequence nothing is, and the tensor-only solution is kept.

    Args:
        query_dim: feature size of the queries.
        key_dim: feature size of the keys.
        num_sequences: number of sequences the calibration data holds.

    Example:

    ```python
    statistics = HeldOutStatistics(384, 384, num_sequences=len(x))
    statistics.update(x, x, self_attention=True)  # x: (batch, length, 384)
    statistics.fit.metrics(), statistics.held_out.metrics()
    ```
    """

    def __init__(self, query_dim, key_dim, num_sequences):
        self.query_dim = query_dim
        self.key_dim = key_dim
        self.num_sequences = int(num_sequences)
        self.fit = LogitStatistics(query_dim, key_dim)
        self.held_out = LogitStatistics(query_dim, key_dim)
        count = 0 if self.num_sequences < 2 else max(1, self.num_sequences // 4)
        # Evenly spread indices: (j + 1/2) n / count for j < count.
        self._held_out = set(
            ((2 * np.arange(count) + 1) * self.num_sequences) // (2 * count)
        ) if count else set()

    def update(self, query, key, attention_mask=None, self_attention=False,
               first_index=0):
        """Adds a batch whose first sequence has index `first_index`; the
        arguments are those of `LogitStatistics.update`."""
        query, key = np.asarray(query), np.asarray(key)
        if query.ndim == 2:  # a single sequence
            query, key = query[None], key[None]
            if attention_mask is not None and np.ndim(attention_mask) == 2:
                attention_mask = np.asarray(attention_mask)[None]
        index = first_index + np.arange(len(query))
        held = np.isin(index, list(self._held_out))
        for part, rows in ((self.fit, ~held), (self.held_out, held)):
            if not rows.any():
                continue
            mask = attention_mask
            if mask is not None and np.ndim(mask) in (3, 4) and len(mask) > 1:
                mask = np.asarray(mask)[rows]
            part.update(query[rows], key[rows], mask, self_attention)

    @property
    def all(self):
        """`LogitStatistics` of every sequence, fit and held-out parts."""
        return self.fit.merged(self.held_out)

    def shortfall(self):
        """`None`, or what the data lacks for a reliable data-aware fit.

        Reliable means at least `MIN_CALIBRATION_SEQUENCES` sequences and at
        least `max(query_dim, key_dim)` tokens (with fewer, the query or key
        moment has unseen directions: its rank is at most the tokens).

        Returns:
            `None` when the data suffices, else a dict with `"sequences"`,
            `"tokens"` (what was given) and `"sequences_needed"`,
            `"tokens_needed"`.
        """
        tokens = self.fit.num_tokens + self.held_out.num_tokens
        needed = max(self.query_dim, self.key_dim)
        if self.num_sequences >= MIN_CALIBRATION_SEQUENCES and tokens >= needed:
            return None
        return {
            "sequences": self.num_sequences,
            "tokens": tokens,
            "sequences_needed": MIN_CALIBRATION_SEQUENCES,
            "tokens_needed": needed,
        }


def _shrunk(moment, blocks, count, sequences):
    """Ledoit-Wolf shrinkage of a second moment towards `trace / size`,
    with sequences as the samples.

    Args:
        moment: `S = sum_j M_j / n`, `(size, size)`.
        blocks: `sum_j ||M_j||^2` over the sequences.
        count: `n`, the positions.
        sequences: `N`, the sequences.
    """
    size = len(moment)
    mu = np.trace(moment) / size
    target = mu * np.eye(size)
    distance = np.sum((moment - target) ** 2)  # d^2
    if sequences < 2:
        return target
    # Y_j = (N / n) M_j, S = mean_j Y_j:
    # sum_j ||Y_j - S||^2 = (N / n)^2 sum_j ||M_j||^2 - N ||S||^2.
    scatter = (sequences / count) ** 2 * blocks - sequences * np.sum(moment**2)
    spread = max(scatter, 0.0) / sequences**2  # b^2
    rho = 1.0 if distance == 0 else min(1.0, spread / distance)
    return (1.0 - rho) * moment + rho * target

"""Greedy and beam-search generation for encoder-decoder models.

keras-hub's samplers drive the loop; they call `next(prompt, cache, index)`
once per position and carry the cache, any nest of batch-first tensors (the
beam sampler repeats and reorders every leaf along the batch axis).
"""

import keras_hub
from keras import ops


def generate(
    model,
    encoder_token_ids,
    encoder_padding_mask=None,
    max_length=64,
    start_token_id=1,
    end_token_id=2,
    pad_token_id=0,
    sampler="greedy",
    num_beams=4,
):
    """Decodes with an incremental cache; see `TransformerNMT.generate`.

    Args:
        model: A model with `build_cache(ids, mask, max_length)` and
            `call_with_cache(ids, cache, index)` (`TransformerNMT`).
        encoder_token_ids: int `(batch, source length)`.
        encoder_padding_mask: Optional `(batch, source length)`.
        max_length: Target length, start token included.
        start_token_id: First decoder token.
        end_token_id: Stop token, or `None`.
        pad_token_id: Token written after the end token.
        sampler: `"greedy"`, `"beam"` or a `keras_hub.samplers.Sampler`.
        num_beams: Beams of `sampler="beam"`.

    Returns:
        int32 `(batch, max_length)`.
    """
    if max_length > model.max_sequence_length:
        raise ValueError(
            "Argument `max_length` must be at most the position table size "
            f"`max_sequence_length={model.max_sequence_length}`. "
            f"Received: max_length={max_length}"
        )
    sampler = _get_sampler(sampler, num_beams)
    encoder_token_ids = ops.convert_to_tensor(encoder_token_ids, "int32")
    batch_size = ops.shape(encoder_token_ids)[0]
    cache = model.build_cache(
        encoder_token_ids, encoder_padding_mask, max_length
    )
    # The prompt: the start token, then positions for the sampler to fill.
    prompt = ops.concatenate(
        [
            ops.full((batch_size, 1), start_token_id, dtype="int32"),
            ops.full((batch_size, max_length - 1), pad_token_id, dtype="int32"),
        ],
        axis=1,
    )
    mask = ops.concatenate(
        [
            ops.ones((batch_size, 1), dtype="bool"),
            ops.zeros((batch_size, max_length - 1), dtype="bool"),
        ],
        axis=1,
    )

    def next(prompt, cache, index):
        # Feed the token at `index - 1`, predict the one at `index`.
        token = ops.slice(prompt, [0, index - 1], [ops.shape(prompt)[0], 1])
        logits, cache = model.call_with_cache(token, cache, index - 1)
        return logits[:, 0, :], None, cache  # (batch, vocabulary)

    tokens = sampler(
        next,
        prompt,
        cache=cache,
        index=1,
        mask=mask,
        stop_token_ids=None if end_token_id is None else (end_token_id,),
        model=model,
    )
    tokens = ops.cast(tokens, "int32")
    if end_token_id is None:
        return tokens
    # Pad everything after each sequence's first end token.
    is_end = ops.cast(ops.equal(tokens, end_token_id), "int32")
    ended_before = ops.cumsum(is_end, axis=1) - is_end  # ends strictly before
    return ops.where(ended_before > 0, pad_token_id, tokens)


def _get_sampler(sampler, num_beams):
    if sampler == "greedy":
        return keras_hub.samplers.GreedySampler()
    if sampler == "beam":
        return keras_hub.samplers.BeamSampler(num_beams=num_beams)
    if isinstance(sampler, keras_hub.samplers.Sampler):
        return sampler
    raise ValueError(
        "Argument `sampler` must be 'greedy', 'beam' or a "
        f"keras_hub.samplers.Sampler. Received: sampler={sampler!r}"
    )

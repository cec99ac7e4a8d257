"""Model FLOPs of a training step and model FLOP utilization (MFU).

An analytical count of the matrix multiplications of `TransformerNMTBackbone`
with its tied output projection, as the MFU of the PaLM paper counts them:
2 FLOPs per multiply-add, a training step 3 forward passes (the backward pass
computes two products for each forward one). Counted per example and layer,
with T the target (decoder) length, S the source (encoder) length, F the
hidden width, N the heads, K the total query/key width (`shared_key_dim`,
else F), V the total value width (F), I the feed-forward width:

    attention   2·F·(T·K + S·K + S·V + T·V)       query, key, value, output projections
                + 2·T·S·K + 2·T·S·V                concatenated: scores and values
                + 2·N·T·S·K + N·T·K + 2·S·F·N + 2·T·S·V   collaborative: each
                  head scores with the whole shared key after its mixing row
                  scales the query, plus the content term y·content_bias
    feed-forward 4·T·F·I
    output      2·T·F·vocabulary_size (logits)

Embedding lookups, normalization, softmax and the causal mask are not
counted (a causal self-attention is counted whole).
"""


def attention_flops(query_length, key_length, hidden_dim, num_heads, key_width,
                    value_width, collaborative):
    """Forward FLOPs of one attention layer for one example.

    Args:
        query_length: T, the attending sequence's length.
        key_length: S, the attended sequence's length.
        hidden_dim: F, the model width (input and output of the layer).
        num_heads: N.
        key_width: K, the total query/key width (collaborative: shared).
        value_width: the total value width, N times the value size.
        collaborative: whether every head scores with the whole shared key.

    Returns:
        The FLOP count, an int.
    """
    t, s, f = query_length, key_length, hidden_dim
    projections = 2 * f * (t * key_width + s * key_width + s * value_width + t * value_width)
    values = 2 * t * s * value_width
    if not collaborative:
        return projections + 2 * t * s * key_width + values
    mixing = num_heads * t * key_width
    content = 2 * s * f * num_heads
    return projections + 2 * num_heads * t * s * key_width + mixing + content + values


def nmt_training_flops(backbone, batch_size, encoder_length, decoder_length):
    """FLOPs of one training step of a `TransformerNMTSeq2SeqLM`.

    Args:
        backbone: the task's `TransformerNMTBackbone`.
        batch_size: examples in the (global) batch.
        encoder_length: S, the padded source length of the batch.
        decoder_length: T, the padded target length of the batch.

    Returns:
        The FLOP count (forward and backward), a float.
    """
    f, n = backbone.hidden_dim, backbone.num_heads
    key_width = backbone.shared_key_dim or f
    collaborative = backbone.attention == "collaborative"

    def attention(t, s):
        return attention_flops(t, s, f, n, key_width, f, collaborative)

    def feed_forward(t):
        return 4 * t * f * backbone.intermediate_dim

    s, t = encoder_length, decoder_length
    encoder = backbone.num_encoder_layers * (attention(s, s) + feed_forward(s))
    decoder = backbone.num_decoder_layers * (attention(t, t) + attention(t, s) + feed_forward(t))
    logits = 2 * t * f * backbone.vocabulary_size
    return 3.0 * batch_size * (encoder + decoder + logits)


# bfloat16 dense peak of an H100-class GPU, in TFLOP/s per device.
GPU_PEAK_TFLOPS = 790.0


def peak_tflops(given, on_gpu, devices):
    """The peak TFLOP/s an MFU is measured against, or None (no MFU).

    Args:
        given: `--peak-tflops`, the peak of one device, or None.
        on_gpu: whether the run trains on GPUs.
        devices: how many devices it trains on.

    Returns:
        `given` (None: `GPU_PEAK_TFLOPS` on GPUs, else no peak) times `devices`.
    """
    per_device = GPU_PEAK_TFLOPS if given is None and on_gpu else given
    return None if per_device is None else per_device * devices

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


def transformer_training_flops(batch_size, encoder_length, hidden_dim, intermediate_dim, num_heads,
                               num_encoder_layers, key_width=None, collaborative=False, decoder_length=0,
                               num_decoder_layers=0, vocabulary_size=0):
    """FLOPs of one training step of a Transformer's blocks (and logits).

    Per encoder block a self-attention over S positions and a feed-forward
    network; per decoder block a self-attention over T positions, a
    cross-attention (T queries, S keys) and a feed-forward network; logits
    over `vocabulary_size` for the T decoder positions. Three forward passes.

    Args:
        batch_size: examples in the (global) batch.
        encoder_length: S, the encoder's (or the only stack's) length.
        hidden_dim: F.
        intermediate_dim: I, the feed-forward width.
        num_heads: N.
        num_encoder_layers: encoder blocks.
        key_width: K, the total query/key width; None: F.
        collaborative: whether the attentions are collaborative.
        decoder_length: T (with decoder blocks).
        num_decoder_layers: decoder blocks.
        vocabulary_size: logits per decoder position (0: none counted).

    Returns:
        The FLOP count (forward and backward), a float.
    """
    f = hidden_dim
    key_width = f if key_width is None else key_width

    def attention(t, s):
        return attention_flops(t, s, f, num_heads, key_width, f, collaborative)

    def feed_forward(t):
        return 4 * t * f * intermediate_dim

    s, t = encoder_length, decoder_length
    encoder = num_encoder_layers * (attention(s, s) + feed_forward(s))
    decoder = num_decoder_layers * (attention(t, t) + attention(t, s) + feed_forward(t))
    logits = 2 * t * f * vocabulary_size
    return 3.0 * batch_size * (encoder + decoder + logits)


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
    return transformer_training_flops(
        batch_size, encoder_length, backbone.hidden_dim, backbone.intermediate_dim, backbone.num_heads,
        backbone.num_encoder_layers, key_width=backbone.shared_key_dim,
        collaborative=backbone.attention == "collaborative", decoder_length=decoder_length,
        num_decoder_layers=backbone.num_decoder_layers, vocabulary_size=backbone.vocabulary_size,
    )


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

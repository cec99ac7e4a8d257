"""Tiny keras-hub tasks for the export and serving tests (seeded weights)."""

import functools

SENTENCES = ["in the beginning", "let there be light", "and it was so", "a"]


def seeded(build):
    """Builds with `keras.utils.set_random_seed(seed)` first: same weights."""

    def seeded_build(seed=0):
        import keras

        keras.utils.set_random_seed(seed)
        return build()

    seeded_build.__name__ = build.__name__
    seeded_build.__doc__ = build.__doc__
    return seeded_build


TARGETS = ["the beginning", "be light", "it was", "so"]


@functools.lru_cache(maxsize=None)
def trained_seq2seq_lm(steps=30):
    """`seq2seq_lm()` after `steps` Adam steps on SENTENCES -> TARGETS.

    Random weights decode the same token everywhere; a few steps give
    decodes that differ by input, stop early, and differ between greedy and
    beam search, so comparisons of decodes can fail. Cached: one per session.
    """
    import keras

    task = seq2seq_lm()
    task.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    for _ in range(steps):
        task.train_on_batch({"encoder_text": SENTENCES, "decoder_text": TARGETS})
    return task


@seeded
def seq2seq_lm():
    """A one-layer Seq2SeqLM with a byte-pair vocabulary of letters."""
    import keras_hub

    vocabulary = {"<s>": 0, "<pad>": 1, "</s>": 2, "<mask>": 3}
    for token in list("abcdefghijklmnopqrstuvwxyz") + ["Ġ", "Ġa", "th", "Ġth"]:
        vocabulary[token] = len(vocabulary)
    merges = ["Ġ a", "t h", "Ġ th"]
    tokenizer = keras_hub.models.BartTokenizer(vocabulary=vocabulary, merges=merges)
    preprocessor = keras_hub.models.BartSeq2SeqLMPreprocessor(
        tokenizer, encoder_sequence_length=16, decoder_sequence_length=10
    )
    backbone = keras_hub.models.BartBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
    )
    task = keras_hub.models.BartSeq2SeqLM(backbone, preprocessor=preprocessor)
    return task


def bert_preprocessor_and_backbone():
    import keras_hub

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
        set(" ".join(SENTENCES).split())
    )
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    return tokenizer, backbone


@seeded
def bert_text_classifier():
    import keras_hub

    tokenizer, backbone = bert_preprocessor_and_backbone()
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=8)
    task = keras_hub.models.BertTextClassifier(backbone, num_classes=3, preprocessor=preprocessor)
    return task


@seeded
def bert_masked_lm():
    import keras_hub

    tokenizer, backbone = bert_preprocessor_and_backbone()
    preprocessor = keras_hub.models.BertMaskedLMPreprocessor(
        tokenizer, sequence_length=8, mask_selection_length=3
    )
    task = keras_hub.models.BertMaskedLM(backbone, preprocessor=preprocessor)
    return task


@seeded
def vit_image_classifier():
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(16, 16, 3),
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
    )
    converter = keras_hub.layers.ViTImageConverter(image_size=(16, 16), scale=1 / 255.0)
    preprocessor = keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter)
    task = keras_hub.models.ViTImageClassifier(backbone, num_classes=3, preprocessor=preprocessor)
    return task

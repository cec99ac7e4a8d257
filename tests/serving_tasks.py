"""Tiny collab_keras tasks for the export and serving tests (seeded weights)."""

import functools

SENTENCES = ["in the beginning", "let there be light", "and it was so", "a"]
TARGETS = ["am anfang", "es werde licht", "und es geschah so", "ein"]


def seeded(build):
    """Builds with `keras.utils.set_random_seed(seed)` first: same weights."""

    @functools.wraps(build)
    def seeded_build(*args, seed=0, **kwargs):
        import keras

        keras.utils.set_random_seed(seed)
        return build(*args, **kwargs)

    return seeded_build


@seeded
def nmt_seq2seq_lm(attention="collaborative"):
    """A one-layer TransformerNMTSeq2SeqLM with a trained WordPiece vocabulary."""
    from collab_keras.models import TransformerNMTBackbone
    from collab_keras.models import TransformerNMTSeq2SeqLM
    from collab_keras.models import TransformerNMTSeq2SeqLMPreprocessor
    from collab_keras.models import TransformerNMTTokenizer

    tokenizer = TransformerNMTTokenizer.train(
        SENTENCES + TARGETS, vocabulary_size=80
    )
    preprocessor = TransformerNMTSeq2SeqLMPreprocessor(
        tokenizer, encoder_sequence_length=12, decoder_sequence_length=10
    )
    backbone = TransformerNMTBackbone.from_architecture(
        "transformer_tiny",
        vocabulary_size=tokenizer.vocabulary_size(),
        num_encoder_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
        dropout=0.0,
        attention=attention,
    )
    return TransformerNMTSeq2SeqLM(backbone, preprocessor)


@functools.lru_cache(maxsize=None)
def trained_nmt_seq2seq_lm(attention="collaborative", steps=30):
    """`nmt_seq2seq_lm()` after `steps` Adam steps on SENTENCES -> TARGETS.

    Random weights decode one token everywhere; a few steps give decodes
    that differ by input, stop early, and differ between greedy and beam
    search, so comparisons of decodes can fail. Cached: one per session.
    """
    import keras

    task = nmt_seq2seq_lm(attention)
    task.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    for _ in range(steps):
        task.train_on_batch(
            {"encoder_text": SENTENCES, "decoder_text": TARGETS}
        )
    return task


def _bert_tokenizer_and_backbone(attention):
    from collab_keras.models import BertBackbone
    from collab_keras.models import BertTokenizer

    words = sorted(set(" ".join(SENTENCES).split()))
    tokenizer = BertTokenizer(
        vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    )
    backbone = BertBackbone.from_architecture(
        "bert_tiny",
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=1,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
        attention=attention,
    )
    return tokenizer, backbone


@seeded
def bert_text_classifier(attention="collaborative"):
    from collab_keras.models import BertTextClassifier
    from collab_keras.models import BertTextClassifierPreprocessor

    tokenizer, backbone = _bert_tokenizer_and_backbone(attention)
    preprocessor = BertTextClassifierPreprocessor(tokenizer, sequence_length=8)
    return BertTextClassifier(
        backbone, num_classes=3, preprocessor=preprocessor
    )


@seeded
def bert_masked_lm(attention="collaborative"):
    from collab_keras.models import BertMaskedLM
    from collab_keras.models import BertMaskedLMPreprocessor

    tokenizer, backbone = _bert_tokenizer_and_backbone(attention)
    preprocessor = BertMaskedLMPreprocessor(
        tokenizer, sequence_length=8, mask_selection_length=3
    )
    return BertMaskedLM(backbone, preprocessor=preprocessor)


@seeded
def vit_image_classifier(attention="collaborative"):
    from collab_keras.models import ViTBackbone
    from collab_keras.models import ViTImageClassifier
    from collab_keras.models import ViTImageClassifierPreprocessor
    from collab_keras.models import ViTImageConverter

    backbone = ViTBackbone.from_architecture(
        "vit_tiny",
        image_shape=(16, 16, 3),
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
        attention=attention,
    )
    converter = ViTImageConverter(image_size=(16, 16), scale=1 / 255.0)
    preprocessor = ViTImageClassifierPreprocessor(image_converter=converter)
    return ViTImageClassifier(
        backbone, num_classes=3, preprocessor=preprocessor
    )

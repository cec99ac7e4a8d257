"""Build the zoo task a run trains: `nmt`, `bert-mlm`, `bert-classify`, `vit`.

`--preset` is either a size-only architecture name of the family's backbone
(`<Backbone>.architectures`: random weights, trained from scratch with a
vocabulary trained on the run's data) or a pretrained preset (a keras-hub
preset folder or handle, a folder written by `save_to_preset`, or an offline
preset name: "all_minilm_l6_v2", "bible_en_de_collaborative"), whose
tokenizer and weights are loaded.
"""

import ast
import os

DEFAULT_ARCHITECTURE = {
    "nmt": "transformer_tiny",
    "bert-mlm": "bert_tiny",
    "bert-classify": "bert_tiny",
    "vit": "vit_tiny",
}
# The special tokens of a BERT WordPiece vocabulary (keras-hub's BertTokenizer).
BERT_RESERVED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _families():
    from collab_keras import models

    return {
        "nmt": (
            models.TransformerNMTBackbone,
            models.TransformerNMTSeq2SeqLM,
        ),
        "bert-mlm": (models.BertBackbone, models.BertMaskedLM),
        "bert-classify": (models.BertBackbone, models.BertTextClassifier),
        "vit": (models.ViTBackbone, models.ViTImageClassifier),
    }


def parse_overrides(pairs):
    """`["num_layers=2", "dropout=0.0"]` -> `{"num_layers": 2, "dropout": 0.0}`."""
    overrides = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(
                "`--set` takes KEY=VALUE with a Python literal value "
                f"(e.g. num_layers=2). Received: --set={pair!r}"
            )
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def is_architecture(task, preset):
    backbone_cls, _ = _families()[task]
    return (preset or DEFAULT_ARCHITECTURE[task]) in backbone_cls.architectures


def check_preset(task, preset):
    """Raises a ValueError naming `preset` when it is neither kind."""
    from collab_keras.models.presets import OFFLINE_PRESETS

    backbone_cls, _ = _families()[task]
    if preset is None or preset in backbone_cls.architectures:
        return
    if os.path.isdir(preset) or preset in OFFLINE_PRESETS or "://" in preset:
        return
    raise ValueError(
        f"`--preset` must be an architecture of {backbone_cls.__name__} "
        f"({', '.join(sorted(backbone_cls.architectures))}), a preset folder, "
        f"a preset handle (kaggle://..., hf://...) or one of "
        f"{sorted(OFFLINE_PRESETS)}. Received: preset={preset!r}"
    )


# Training examples a new vocabulary is trained on: every example of the
# offline corpora (the Bible's 30,447 verse pairs, the tweets, the digits) and
# of GLUE SST-2; the first 200,000 of a larger tfds corpus such as WMT14.
VOCABULARY_EXAMPLES = 200_000


def train_vocabulary(task, texts, vocabulary_size):
    """A WordPiece vocabulary for the task's tokenizer, trained on `texts`."""
    from collab_keras.training import vocabulary

    if task == "nmt":
        from collab_keras import models

        tokenizer = models.TransformerNMTTokenizer.train(texts, vocabulary_size)
        return list(tokenizer.get_vocabulary())
    return vocabulary.train(texts, vocabulary_size, BERT_RESERVED_TOKENS, lowercase=True)


def new_vocabulary(config, train_examples):
    """The vocabulary of a new run or prepared folder (architecture presets
    of text tasks; None otherwise): `vocabulary_file`'s tokens, else a
    vocabulary trained on the raw training examples (a tf.data split)."""
    from collab_keras.training import data
    from collab_keras.training import vocabulary

    if config.task == "vit" or not is_architecture(config.task, config.preset):
        return None
    if config.vocabulary_file is not None:
        return vocabulary.read(config.vocabulary_file)
    return train_vocabulary(
        config.task,
        data.text_sample(config.task, train_examples, VOCABULARY_EXAMPLES),
        config.vocabulary_size,
    )


def build(config, vocabulary=None, num_classes=None, calibration_data=None):
    """The task model of `config` (uncompiled), with its preprocessor.

    A pretrained preset is loaded with `from_preset`, which converts it to
    `config.attention` (`collab_keras.reparametrize`, calibrated as
    `config.calibration` says); a text preprocessor of it takes
    `config.sequence_length` tokens, at most the backbone's
    `max_sequence_length`.

    Args:
        config: a `RunConfig`.
        vocabulary: the token list for an architecture (size-only) preset;
            ignored for a pretrained preset, whose tokenizer is loaded.
        num_classes: for the classification tasks.
        calibration_data: with `config.calibration == "train"`, the
            training examples to calibrate on: raw inputs (strings) or the
            backbone's inputs (a dict of arrays).
    """
    from collab_keras import models

    task = config.task
    backbone_cls, task_cls = _families()[task]
    attention = {"attention": config.attention, "shared_key_dim": config.shared_key_dim}
    length = config.sequence_length
    classes = {} if num_classes is None else {"num_classes": num_classes}
    if not is_architecture(task, config.preset):
        if config.calibration == "train" and calibration_data is None:
            raise ValueError(
                "calibration='train' needs the training examples to calibrate on. "
                "Received: calibration_data=None"
            )
        calibration = {"none": None, "train": calibration_data}.get(
            config.calibration, config.calibration)
        task_model = task_cls.from_preset(
            config.preset, **attention, **classes, calibration_data=calibration)
        preprocessor = task_model.preprocessor
        if hasattr(preprocessor, "sequence_length"):
            limit = task_model.backbone.max_sequence_length
            if length > limit:
                raise ValueError(
                    f"`sequence_length` must be at most the preset's max_sequence_length "
                    f"{limit}. Received: sequence_length={length}, preset={config.preset!r}"
                )
            preprocessor.sequence_length = length
        return task_model

    name = config.preset or DEFAULT_ARCHITECTURE[task]
    overrides = dict(config.overrides)
    if task == "vit":
        backbone = backbone_cls.from_architecture(name, **attention, **overrides)
        converter = models.ViTImageConverter(
            image_size=backbone.image_shape[:2], scale=1.0 / 255.0
        )
        preprocessor = models.ViTImageClassifierPreprocessor(converter)
        return task_cls(backbone, preprocessor=preprocessor, **classes)

    backbone = backbone_cls.from_architecture(
        name, vocabulary_size=len(vocabulary), **attention, **overrides
    )
    if task == "nmt":
        tokenizer = models.TransformerNMTTokenizer(vocabulary=vocabulary)
        preprocessor = models.TransformerNMTSeq2SeqLMPreprocessor(
            tokenizer, encoder_sequence_length=length, decoder_sequence_length=length
        )
        return task_cls(backbone, preprocessor=preprocessor)
    tokenizer = models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    if task == "bert-mlm":
        preprocessor = models.BertMaskedLMPreprocessor(
            tokenizer, sequence_length=length, mask_selection_length=max(1, length // 5)
        )
        return task_cls(backbone, preprocessor=preprocessor)
    preprocessor = models.BertTextClassifierPreprocessor(tokenizer, sequence_length=length)
    return task_cls(backbone, preprocessor=preprocessor, **classes)


def vocabulary_of(task_model):
    """The vocabulary of a built task's tokenizer (None for images)."""
    tokenizer = getattr(task_model.preprocessor, "tokenizer", None)
    return None if tokenizer is None else list(tokenizer.get_vocabulary())

"""Text classifier preprocessor of the zoo's BertBackbone."""

import keras
import keras_hub

from ..zoo_model import IntegerMasks
from ..zoo_model import ZooPreprocessing
from .bert_backbone import BertBackbone
from .bert_tokenizer import BertTokenizer


@keras.saving.register_keras_serializable(package="collab_keras")
class BertTextClassifierPreprocessor(
    IntegerMasks, ZooPreprocessing, keras_hub.models.BertTextClassifierPreprocessor
):
    """keras-hub's `BertTextClassifierPreprocessor` for the zoo's `BertBackbone`.

    Tokenizes raw strings (or pairs) with a `BertTokenizer`, adds `[CLS]`/`[SEP]` and pads to `sequence_length` exactly as
    keras-hub's, except that `padding_mask` is int32 (see `IntegerMasks`:
    boolean masks break `fit` under `tf.distribute`); `from_preset` also
    reads keras-hub BERT presets and `"all_minilm_l6_v2"`.

    Args:
        tokenizer: A `BertTokenizer`.
        sequence_length: Length of the packed sequences.
        **kwargs: The other arguments of keras-hub's `BertTextClassifierPreprocessor`.

    Example:

    ```python
    preprocessor = BertTextClassifierPreprocessor.from_preset(
        "all_minilm_l6_v2", sequence_length=32
    )
    preprocessor(["The quick brown fox."])
    ```
    """

    backbone_cls = BertBackbone
    tokenizer_cls = BertTokenizer

"""Masked language model on the zoo's BertBackbone."""

import keras
import keras_hub

from ..zoo_model import ZooTask
from .bert_backbone import BertBackbone
from .bert_masked_lm_preprocessor import BertMaskedLMPreprocessor


@keras.saving.register_keras_serializable(package="collab_keras")
class BertMaskedLM(ZooTask, keras_hub.models.BertMaskedLM):
    """keras-hub's `BertMaskedLM` on the zoo's `BertBackbone`.

    keras-hub's `MaskedLMHead`, tied to the token embedding, predicts the
    tokens at `mask_positions`; with a `BertMaskedLMPreprocessor`, `fit`
    takes raw strings (the preprocessor masks tokens at random and gives the
    labels). `compile()` defaults, `save_to_preset`, `enable_lora` and
    `quantize` come from keras-hub; the config carries the backbone's
    attention switch (see `BertTextClassifier`).

    Args:
        backbone: A `BertBackbone`.
        preprocessor: A `BertMaskedLMPreprocessor` or `None`.

    Example:

    ```python
    masked_lm = BertMaskedLM.from_preset("all_minilm_l6_v2",
                                         attention="collaborative")
    masked_lm.fit(["The quick brown fox jumped."], batch_size=1)
    ```
    """

    backbone_cls = BertBackbone
    preprocessor_cls = BertMaskedLMPreprocessor

"""Text classifier on the zoo's BertBackbone."""

import keras
import keras_hub

from ..zoo_model import ZooTask
from .bert_backbone import BertBackbone
from .bert_text_classifier_preprocessor import BertTextClassifierPreprocessor


@keras.saving.register_keras_serializable(package="collab_keras")
class BertTextClassifier(ZooTask, keras_hub.models.BertTextClassifier):
    """keras-hub's `BertTextClassifier` on the zoo's `BertBackbone`.

    A dropout and a dense layer on `pooled_output`, as keras-hub's:
    `compile()` defaults (sparse categorical cross-entropy from logits,
    accuracy, Adam 5e-5), `fit`/`predict` on raw strings through the
    preprocessor, `save_to_preset`, `enable_lora` and `quantize` come from
    keras-hub. The task's config carries its backbone's attention switch, so
    `collab_keras.reparametrize(classifier, shared_key_dim)` returns a
    collaborative classifier that keeps its tokenizer and saves and loads.

    Args:
        backbone: A `BertBackbone`.
        num_classes: Number of classes.
        preprocessor: A `BertTextClassifierPreprocessor` or `None` (inputs
            are then the backbone's dict of ids).
        activation: Activation of the outputs (`None`: logits).
        dropout: Dropout before the dense layer.

    `from_preset(preset, load_weights=True, attention=None,
    shared_key_dim=None, calibration_data="auto", **kwargs)` loads a zoo
    or keras-hub BERT preset, or `"all_minilm_l6_v2"`, and converts on load
    with `attention="collaborative"` (below the full width and without
    calibration data, on the backbone's synthetic inputs).

    Example:

    ```python
    classifier = BertTextClassifier.from_preset(
        "all_minilm_l6_v2", num_classes=2, attention="collaborative",
        shared_key_dim=128, calibration_data=["a sentence", "another one"],
    )
    classifier.fit(["a great movie", "a bad movie"], [1, 0], batch_size=2)
    classifier.predict(["a great movie"])  # (1, 2) logits
    ```
    """

    backbone_cls = BertBackbone
    preprocessor_cls = BertTextClassifierPreprocessor

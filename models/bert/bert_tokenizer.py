"""BERT WordPiece tokenizer of the zoo's BertBackbone."""

import keras
import keras_hub

from ..zoo_model import ZooPreprocessing
from .bert_backbone import BertBackbone


@keras.saving.register_keras_serializable(package="collab_keras")
class BertTokenizer(ZooPreprocessing, keras_hub.models.BertTokenizer):
    """keras-hub's `BertTokenizer` for the zoo's `BertBackbone`.

    Everything is keras-hub's (WordPiece, `[CLS]`/`[SEP]`/`[PAD]`/`[MASK]`,
    `from_preset`, `save_to_preset`) except two things:

    - `from_preset` also reads keras-hub BERT presets and
      `"all_minilm_l6_v2"`;
    - `get_config` carries the vocabulary, so copies made from a config
      (`collab_keras.reparametrize`, `keras.models.clone_model`) keep it;
      keras-hub stores it only as an asset file.

    Args:
        vocabulary: A list of tokens or a vocabulary file.
        lowercase: Whether to lowercase the input.
        **kwargs: `keras_hub.tokenizers.WordPieceTokenizer` arguments.

    Example:

    ```python
    tokenizer = BertTokenizer.from_preset("all_minilm_l6_v2")
    tokenizer("The quick brown fox.")
    ```
    """

    backbone_cls = BertBackbone

    def get_config(self):
        config = super().get_config()
        if self.vocabulary is not None:
            config["vocabulary"] = self.get_vocabulary()
        return config

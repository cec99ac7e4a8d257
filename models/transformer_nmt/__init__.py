"""Transformer-NMT (Vaswani et al., 2017) in keras-hub's layout."""

from keras_hub.src.utils.preset_utils import register_presets

from .transformer_nmt_backbone import TransformerNMTBackbone
from .transformer_nmt_presets import backbone_presets
from .transformer_nmt_seq_2_seq_lm import TransformerNMTSeq2SeqLM
from .transformer_nmt_seq_2_seq_lm_preprocessor import (
    TransformerNMTSeq2SeqLMPreprocessor,
)
from .transformer_nmt_tokenizer import TransformerNMTTokenizer

register_presets(backbone_presets, TransformerNMTBackbone)

"""BERT-style encoders: backbone, tokenizer, preprocessors and tasks."""

from keras_hub.src.utils.preset_utils import register_presets

from .bert_backbone import BertBackbone
from .bert_masked_lm import BertMaskedLM
from .bert_masked_lm_preprocessor import BertMaskedLMPreprocessor
from .bert_presets import backbone_presets
from .bert_text_classifier import BertTextClassifier
from .bert_text_classifier_preprocessor import BertTextClassifierPreprocessor
from .bert_tokenizer import BertTokenizer

register_presets(backbone_presets, BertBackbone)

"""BERT-style encoders: backbone, tokenizer, preprocessors and tasks."""

from .bert_backbone import BertBackbone
from .bert_masked_lm import BertMaskedLM
from .bert_masked_lm_preprocessor import BertMaskedLMPreprocessor
from .bert_text_classifier import BertTextClassifier
from .bert_text_classifier_preprocessor import BertTextClassifierPreprocessor
from .bert_tokenizer import BertTokenizer

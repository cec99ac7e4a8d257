"""collab_keras.models: BERT, ViT and Transformer-NMT as keras-hub models
with an attention switch.

`attention="concatenate"` builds keras.layers.MultiHeadAttention,
`attention="collaborative"` builds collab_keras.layers.CollaborativeAttention;
see docs/models.md.
"""

from .attention_factory import make_attention
from .bert import BertBackbone
from .bert import BertMaskedLM
from .bert import BertMaskedLMPreprocessor
from .bert import BertTextClassifier
from .bert import BertTextClassifierPreprocessor
from .bert import BertTokenizer
from .cached_concatenated_attention import CachedConcatenatedAttention
from .keras_hub_weights import from_keras_hub
from .parameter_count import cache_bytes_per_token
from .parameter_count import count_parameters
from .transformer_decoder_block import TransformerDecoderBlock
from .transformer_encoder_block import TransformerEncoderBlock
from .transformer_nmt import TransformerNMTBackbone
from .transformer_nmt import TransformerNMTSeq2SeqLM
from .transformer_nmt import TransformerNMTSeq2SeqLMPreprocessor
from .transformer_nmt import TransformerNMTTokenizer
from .vit import PatchEmbedding
from .vit import ViTBackbone
from .vit import ViTImageClassifier
from .vit import ViTImageClassifierPreprocessor
from .vit import ViTImageConverter

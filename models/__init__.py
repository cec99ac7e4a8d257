"""collab_keras.models: Transformer-NMT, BERT and ViT with an attention switch.

`attention="concatenate"` builds keras.layers.MultiHeadAttention,
`attention="collaborative"` builds collab_keras.layers.CollaborativeAttention;
see docs/models.md.
"""

from .attention_factory import make_attention
from .bert_encoder import BertEncoder
from .keras_hub_weights import load_bert_backbone_weights
from .keras_hub_weights import load_vit_backbone_weights
from .parameter_count import cache_bytes_per_token
from .parameter_count import count_parameters
from .patch_embedding import PatchEmbedding
from .presets import BERT_PRESETS
from .presets import TRANSFORMER_PRESETS
from .presets import VIT_PRESETS
from .transformer_decoder_block import TransformerDecoderBlock
from .transformer_encoder_block import TransformerEncoderBlock
from .transformer_nmt import TransformerNMTBackbone
from .transformer_nmt import TransformerNMTSeq2SeqLM
from .transformer_nmt import TransformerNMTSeq2SeqLMPreprocessor
from .transformer_nmt import TransformerNMTTokenizer
from .vision_transformer import VisionTransformer

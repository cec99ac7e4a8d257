from collab_keras.ops.collaborative_dot_product_attention import (
    collaborative_dot_product_attention,
)
from collab_keras.ops.collaborative_dot_product_attention import (
    fused_attention_preferred,
)

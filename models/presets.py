"""Named size presets of the three model families.

Each preset is a dict of constructor arguments; `Model.from_preset(name,
**overrides)` builds it (randomly initialized: these are sizes, not
checkpoints; load weights with `keras_hub_weights`).

Sources: Transformer base/big (Vaswani et al. 2017: one shared 37,000-token
BPE vocabulary and embedding; learned positions here instead of sinusoids;
the paper's WMT16 En-De runs use base, its first version big); BERT base (Devlin et al. 2019;
`bert_base_cased` is the paper's parameter-count model) and the compact BERTs
(Turc et al. 2019); all-MiniLM-L6-v2 (the checkpoint of the parity test);
ViT-B/16 (Dosovitskiy et al. 2021); DeiT-Tiny/Small (Touvron et al. 2021,
the paper's vision experiments).
"""

TRANSFORMER_PRESETS = {
    "transformer_tiny": dict(
        vocabulary_size=1000,
        num_encoder_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        hidden_dim=64,
        intermediate_dim=128,
        max_sequence_length=64,
    ),
    "transformer_base": dict(
        vocabulary_size=37000,
        num_encoder_layers=6,
        num_decoder_layers=6,
        num_heads=8,
        hidden_dim=512,
        intermediate_dim=2048,
        max_sequence_length=1024,
        share_embeddings=True,
    ),
    "transformer_big": dict(
        vocabulary_size=37000,
        num_encoder_layers=6,
        num_decoder_layers=6,
        num_heads=16,
        hidden_dim=1024,
        intermediate_dim=4096,
        max_sequence_length=1024,
        share_embeddings=True,
    ),
}

BERT_PRESETS = {
    "bert_tiny": dict(
        vocabulary_size=30522,
        num_layers=2,
        num_heads=2,
        hidden_dim=128,
        intermediate_dim=512,
    ),
    "bert_mini": dict(
        vocabulary_size=30522,
        num_layers=4,
        num_heads=4,
        hidden_dim=256,
        intermediate_dim=1024,
    ),
    "bert_small": dict(
        vocabulary_size=30522,
        num_layers=4,
        num_heads=8,
        hidden_dim=512,
        intermediate_dim=2048,
    ),
    "minilm_l6": dict(
        vocabulary_size=30522,
        num_layers=6,
        num_heads=12,
        hidden_dim=384,
        intermediate_dim=1536,
    ),
    "bert_base_uncased": dict(
        vocabulary_size=30522,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        intermediate_dim=3072,
    ),
    "bert_base_cased": dict(
        vocabulary_size=28996,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        intermediate_dim=3072,
    ),
}

VIT_PRESETS = {
    "vit_tiny": dict(
        image_shape=(32, 32, 3),
        patch_size=4,
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=10,
    ),
    "deit_tiny": dict(
        image_shape=(224, 224, 3),
        patch_size=16,
        num_layers=12,
        num_heads=3,
        hidden_dim=192,
        mlp_dim=768,
        num_classes=1000,
    ),
    "deit_small": dict(
        image_shape=(224, 224, 3),
        patch_size=16,
        num_layers=12,
        num_heads=6,
        hidden_dim=384,
        mlp_dim=1536,
        num_classes=1000,
    ),
    "vit_b16": dict(
        image_shape=(224, 224, 3),
        patch_size=16,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        mlp_dim=3072,
        num_classes=1000,
    ),
}


def get_preset(presets, preset):
    """The constructor arguments of `preset` (a copy)."""
    if preset not in presets:
        raise ValueError(
            f"Argument `preset` must be one of {sorted(presets)}. "
            f"Received: preset={preset!r}"
        )
    return dict(presets[preset])

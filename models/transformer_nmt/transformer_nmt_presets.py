"""Pretrained presets of the zoo's Transformer-NMT family (registered with
keras-hub, so `TransformerNMTBackbone.presets` and the task's `.presets`
list them)."""

from ..presets import registered_presets

backbone_presets = registered_presets(
    ["bible_en_de_collaborative"],
    bible_en_de_collaborative={
        "description": (
            "English to German translator with collaborative attention, "
            "trained on the Bible verses of the offline corpus (King James "
            "to Schlachter 1951); shipped inside collab_keras, its test BLEU "
            "in the folder's results.json."
        ),
        "path": "transformer_nmt",
    },
)

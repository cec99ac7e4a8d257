"""Closed-form parameter counts against the built models and the paper."""

import pytest

from collab_keras.models import BertEncoder
from collab_keras.models import TransformerNMT
from collab_keras.models import VisionTransformer
from collab_keras.models import cache_bytes_per_token
from collab_keras.models import count_parameters

_TINY = [
    ("bert", BertEncoder, "bert_tiny", {}),
    ("bert", BertEncoder, "bert_tiny", {"num_classes": 3}),
    ("vit", VisionTransformer, "vit_tiny", {}),
    ("transformer", TransformerNMT, "transformer_tiny", {}),
    (
        "transformer",
        TransformerNMT,
        "transformer_tiny",
        {
            "normalize_first": True,
            "tie_output_embeddings": False,
            "share_embeddings": True,
        },
    ),
    ("transformer", TransformerNMT, "transformer_tiny", {"source_vocabulary_size": 700}),
    ("transformer", TransformerNMT, "transformer_tiny", {"cross_attention": "concatenate"}),
]


@pytest.mark.parametrize(
    "attention", [{}, {"attention": "collaborative"},
                  {"attention": "collaborative", "shared_key_dim": 12}]
)
@pytest.mark.parametrize("family, model_class, preset, options", _TINY)
def test_closed_form_equals_count_params(
    family, model_class, preset, options, attention
):
    kwargs = {**options, **attention}
    if attention.get("shared_key_dim"):
        kwargs["attention_kwargs"] = {"mixing_initializer": "random_normal"}
    model = model_class.from_preset(preset, **kwargs)
    assert model.count_params() == count_parameters(family, preset, **kwargs)


def test_paper_bert_base_cased_figures():
    # Cordonnier et al.: 108.3M concatenated; 108.5M, 101.4M, 99.0M at
    # shared key sizes 768, 384, 256 (bert-base-cased, pooler included).
    assert count_parameters("bert", "bert_base_cased") == 108_310_272
    collaborative = {
        shared_key_dim: count_parameters(
            "bert",
            "bert_base_cased",
            attention="collaborative",
            shared_key_dim=shared_key_dim,
        )
        for shared_key_dim in (768, 384, 256)
    }
    assert round(collaborative[768] / 1e6, 1) == 108.5
    assert round(collaborative[384] / 1e6, 1) == 101.4
    assert round(collaborative[256] / 1e6, 1) == 99.0


@pytest.mark.slow
def test_bert_base_cased_builds_with_the_paper_count():
    model = BertEncoder.from_preset("bert_base_cased")
    assert model.count_params() == 108_310_272
    model = BertEncoder.from_preset(
        "bert_base_cased", attention="collaborative", shared_key_dim=384
    )
    assert model.count_params() == 101_379_840


def test_unknown_family():
    with pytest.raises(ValueError, match="Received: family='gpt'"):
        count_parameters("gpt", "gpt2")


@pytest.mark.parametrize(
    "attention, shared_key_dim",
    [("concatenate", None), ("collaborative", None), ("collaborative", 16)],
)
def test_closed_form_cache_bytes(attention, shared_key_dim):
    model = TransformerNMT.from_preset(
        "transformer_tiny", attention=attention, shared_key_dim=shared_key_dim
    )
    assert model.cache_bytes_per_token()["self"] == cache_bytes_per_token(
        "transformer_tiny", attention, shared_key_dim
    )


def test_paper_translation_compression():
    # Cordonnier et al. (WMT16 En-De, 6+6 layers, d 512, 8 heads): 60.9M at
    # shared key size 512, 52.6M at 64: 8.3M fewer with every attention
    # (encoder self, decoder self, cross) collaborative.
    sizes = [
        count_parameters(
            "transformer",
            "transformer_base",
            attention="collaborative",
            shared_key_dim=shared_key_dim,
        )
        for shared_key_dim in (512, 64)
    ]
    assert sizes[0] - sizes[1] == 8_322_048

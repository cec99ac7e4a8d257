"""Closed-form parameter counts against the built models and the paper.

The Transformer-NMT models' own count checks live with them
(tests/test_models_transformer_nmt.py); the paper's translation figure is
checked here from the closed form.
"""

import pytest

from collab_keras.models import BertBackbone
from collab_keras.models import BertTextClassifier
from collab_keras.models import ViTBackbone
from collab_keras.models import ViTImageClassifier
from collab_keras.models import count_parameters


def _bert(num_classes=None, **kwargs):
    backbone = BertBackbone.from_architecture("bert_tiny", **kwargs)
    if num_classes is None:
        return backbone
    return BertTextClassifier(backbone, num_classes)


def _vit(num_classes=None, **kwargs):
    backbone = ViTBackbone.from_architecture("vit_tiny", **kwargs)
    if num_classes is None:
        return backbone
    return ViTImageClassifier(backbone, num_classes)


_TINY = [
    ("bert", _bert, "bert_tiny", {}),
    ("bert", _bert, "bert_tiny", {"num_classes": 3}),
    ("vit", _vit, "vit_tiny", {}),
    ("vit", _vit, "vit_tiny", {"num_classes": 10}),
]


@pytest.mark.parametrize(
    "attention",
    [
        {},
        {"attention": "collaborative"},
        {"attention": "collaborative", "shared_key_dim": 12},
    ],
)
@pytest.mark.parametrize("family, build, architecture, options", _TINY)
def test_closed_form_equals_count_params(
    family, build, architecture, options, attention
):
    kwargs = {**options, **attention}
    if attention.get("shared_key_dim"):
        kwargs["attention_kwargs"] = {"mixing_initializer": "random_normal"}
    model = build(**kwargs)
    assert model.count_params() == count_parameters(
        family, architecture, **kwargs
    )


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
    model = BertBackbone.from_architecture("bert_base_cased")
    assert model.count_params() == 108_310_272
    model = BertBackbone.from_architecture(
        "bert_base_cased", attention="collaborative", shared_key_dim=384
    )
    assert model.count_params() == 101_379_840


def test_unknown_family_or_architecture():
    with pytest.raises(ValueError, match="Received: family='gpt'"):
        count_parameters("gpt", "gpt2")
    with pytest.raises(ValueError, match="Received: architecture='bert_huge'"):
        count_parameters("bert", "bert_huge")


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

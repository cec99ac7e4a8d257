"""The Python snippets of docs/models.md run as written.

One test per snippet of the BERT/ViT sections (the Transformer-NMT section
is tested with its models). The quick start converts and fine-tunes the real
all-MiniLM-L6-v2, so it is marked slow.
"""

import os
import re

import pytest

_DOCS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "docs",
    "models.md",
)
_SECTIONS = (
    "Quick start: fine-tune a collaborative MiniLM on your sentences",
    "Size-only architectures (random weights)",
    "Pretrained presets",
    "Conversions that survive saving",
    "keras-hub's own tasks",
    "Images",
)


def _snippets():
    """`(section, code)` of every ```python block in `_SECTIONS`."""
    text = open(_DOCS, encoding="utf-8").read()
    snippets = []
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title = section.splitlines()[0].strip()
        if title not in _SECTIONS:
            continue
        for code in re.findall(r"```python\n(.*?)```", section, flags=re.S):
            snippets.append((title, code))
    return snippets


def _params():
    params = []
    for title, code in _snippets():
        marks = [pytest.mark.slow] if title.startswith("Quick start") else []
        params.append(pytest.param(code, id=title.split(":")[0], marks=marks))
    return params


def test_every_section_has_its_snippet():
    assert sorted({title for title, _ in _snippets()}) == sorted(_SECTIONS)


@pytest.mark.parametrize("code", _params())
def test_snippet_runs(code):
    exec(compile(code, _DOCS, "exec"), {"__name__": "__docs__"})

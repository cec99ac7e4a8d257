"""The "translate with a collaborative Transformer" snippet of docs/models.md
runs as written."""

import os
import re

import keras
import pytest

DOCS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "docs",
    "models.md",
)


def _snippet(heading):
    with open(DOCS, encoding="utf-8") as file:
        text = file.read()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.slow
def test_translate_snippet_runs_and_translates(capsys):
    keras.utils.set_random_seed(0)
    namespace = {}
    exec(_snippet("#### Translate with a collaborative Transformer"), namespace)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    model, sources, targets = (
        namespace["model"], namespace["sources"], namespace["targets"]
    )
    assert model.backbone.attention == "collaborative"
    assert isinstance(printed, str) and printed
    # The tiny model learned its five pairs (a few may still be off).
    translations = model.generate(sources)
    correct = sum(t == e for t, e in zip(translations, targets))
    assert correct >= 3, translations

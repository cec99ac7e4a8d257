"""The Python snippets of README.md run as written.

The snippets run in order in one namespace, as a reader pasting them into
one session would. The two five-line examples (fine-tune a collaborative
MiniLM, translate with a collaborative Transformer) are the ones of
docs/models.md, which tests/test_models_docs.py and
tests/test_models_transformer_nmt_docs.py run; here they must be the same
text, so that what the README shows is what those tests run.
"""

import os
import re

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_blocks(name):
    text = open(os.path.join(_ROOT, name), encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _trained_in_docs(code):
    return "fit(" in code


def test_readme_examples_are_the_tested_docs_examples():
    readme = [c for c in _python_blocks("README.md") if _trained_in_docs(c)]
    docs = _python_blocks(os.path.join("docs", "models.md"))
    assert len(readme) == 2
    for code in readme:
        assert code in docs


@pytest.mark.slow
def test_readme_snippets_run(capsys):
    namespace = {"__name__": "__readme__"}
    for code in _python_blocks("README.md"):
        if not _trained_in_docs(code):
            exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["collaborative_model"] is not None
    # The shipped translator prints what the README says it prints.
    printed = capsys.readouterr().out
    assert "['Im Anfang war das Wort, und das Wort war bei Gott.']" in printed

"""The documentation site builds in strict mode (mkdocs.yml at the repository root).

`mkdocs build --strict` fails on any warning: a link to a missing page or
anchor, an API reference (mkdocstrings, static analysis with griffe) that no
longer resolves, a malformed docstring section.
"""

import os
import shutil
import subprocess
import sys

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mkdocs_build(config_file, site_dir):
    environment = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", config_file, "--site-dir", site_dir],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


def test_site_builds_in_strict_mode(tmp_path):
    site = tmp_path / "site"
    result = mkdocs_build(os.path.join(REPOSITORY, "mkdocs.yml"), str(site))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "index.html").is_file()
    # The API reference was generated from the docstrings, not left empty.
    layers = (site / "api" / "layers" / "index.html").read_text()
    assert 'id="collab_keras.layers.CollaborativeAttention"' in layers
    assert 'id="collab_keras.layers.CachedCollaborativeAttention"' in layers
    assert "shared_key_dim" in layers
    reparametrization = (site / "api" / "reparametrization" / "index.html").read_text()
    assert 'id="collab_keras.reparametrization.reparametrize.reparametrize"' in reparametrization
    models = (site / "api" / "models" / "index.html").read_text()
    assert models.count('class="doc doc-heading"') > 5, "the model zoo's reference is (nearly) empty"


def test_broken_link_fails_the_build(tmp_path):
    # A copy of the pages with one link to a page that does not exist (the
    # API reference pages stay, unrendered: only the search plugin runs).
    docs = tmp_path / "docs"
    shutil.copytree(os.path.join(REPOSITORY, "docs"), docs)
    with open(docs / "index.md", "a") as f:
        f.write("\nSee [the missing page](no_such_page.md).\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        f"INHERIT: {os.path.join(REPOSITORY, 'mkdocs.yml')}\n"
        f"docs_dir: {docs}\n"
        "plugins: [search]\n"
    )
    result = mkdocs_build(str(config), str(tmp_path / "site"))
    assert result.returncode != 0
    assert "no_such_page.md" in result.stdout + result.stderr

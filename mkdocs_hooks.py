"""MkDocs hook: the nav in mkdocs.yml, restricted to the pages that exist.

Guide pages are written on several branches; mkdocs.yml lists all of them in
reading order. This hook drops listed pages that are not in this checkout's
docs/ and appends every docs/*.md page that mkdocs.yml does not list to the
"Guide" section, so the nav follows docs/ and `mkdocs build --strict` fails
only on real problems (broken links, references, docstrings).
"""

import logging
import os


def on_config(config):
    docs_dir = config["docs_dir"]
    listed = set()

    def keep(entries):
        kept = []
        for entry in entries:
            title, target = next(iter(entry.items())) if isinstance(entry, dict) else (None, entry)
            if isinstance(target, list):
                target = keep(target)
                if not target:
                    continue
            elif not target.startswith(("http://", "https://")):
                listed.add(target)
                if not os.path.isfile(os.path.join(docs_dir, target)):
                    continue
            kept.append({title: target} if title is not None else target)
        return kept

    nav = keep(config["nav"])
    unlisted = sorted(
        name for name in os.listdir(docs_dir) if name.endswith(".md") and name not in listed
    )
    guide = next((entry["Guide"] for entry in nav if isinstance(entry, dict) and "Guide" in entry), None)
    if guide is None:
        guide = []
        nav.append({"Guide": guide})
    guide.extend(unlisted)
    config["nav"] = nav
    return config


# Docstrings that the Google-style parser reports although they render as
# written: (file, start of the message). CachedCollaborativeAttention's
# "Args:" section is one sentence of prose ("Those of
# `CollaborativeAttention`."). Remove an entry once its docstring changes.
_KNOWN_DOCSTRING_WARNINGS = (
    ("collab_keras/layers/cached_collaborative_attention.py", "Failed to get 'name: description' pair"),
)


class _KnownDocstringWarnings(logging.Filter):
    def filter(self, record):
        message = record.getMessage()
        return not any(path in message and text in message for path, text in _KNOWN_DOCSTRING_WARNINGS)


def on_startup(command, dirty):
    logging.getLogger("mkdocs.plugins.griffe").addFilter(_KnownDocstringWarnings())

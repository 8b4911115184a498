"""MkDocs hook: the configuration page gets its reference from the config sections at build time
(``tunebench.core.config_reference``), so the docs never hold a hand-copied list of settings."""

from __future__ import annotations

from tunebench.core.config_reference import PLACEHOLDER, reference_markdown


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs' hook signature)
    if PLACEHOLDER in markdown:
        return markdown.replace(PLACEHOLDER, reference_markdown())
    return markdown

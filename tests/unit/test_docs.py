"""The docs build with `mkdocs build --strict` (no broken link, no page outside the nav), and the configuration page
holds every key of every section, generated from the config classes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _keys(cls: type, prefix: str = "") -> list[str]:
    from tunebench.core import config_schema

    hints = typing.get_type_hints(cls, vars(config_schema))
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return out


def test_docs_build_strict(site):
    assert (site / "index.html").is_file()


def test_configuration_reference_lists_every_key(site):
    from tunebench.core.config_schema import RunConfig

    page = (site / "configuration" / "index.html").read_text(encoding="utf-8")
    missing = [k for k in _keys(RunConfig) if f"<code>{k}</code>" not in page]
    assert not missing, f"keys missing from the generated reference: {missing}"


README_MAX_BYTES = 12 * 1024
"""README sells and starts (issue 40): what it is, a sample, the Quick start, own data, the decision, links. The rest
lives in docs/."""


def test_readme_stays_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) <= README_MAX_BYTES, "README grew past 12 KB: move the detail into docs/"
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    unlinked = [p for p in pages if f"(docs/{p})" not in readme and f"(docs/{p}#" not in readme]
    assert not unlinked, f"docs pages README does not link: {unlinked}"


def test_no_docs_page_is_a_stub():
    stubs = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if "(being written)" in p.read_text(encoding="utf-8")]
    assert not stubs, f"placeholder pages: {stubs}"

"""The module map in docs/architecture.md (the block that README's "Layout" section held) lists every module of the
package, in the section of its subpackage, and none that is gone. A module of a nested subpackage is named with its
path inside its top-level subpackage (``lm_eval/runner.py`` in ``evals/``'s section), so two modules of one name
(``evals/runner.py``, ``evals/lm_eval/runner.py``) are each checked."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tunebench"
MAP_PAGE = ROOT / "docs" / "architecture.md"


def map_sections() -> dict[str, set[str]]:
    """Subpackage (or ``.`` for the package's own modules) -> the ``*.py`` names its section of the map lists (a
    nested subpackage's modules with their folder: ``lm_eval/runner.py``)."""
    text = MAP_PAGE.read_text(encoding="utf-8")
    block = text[text.index("\ntunebench/ ") :]
    block = block[: block.index("```")]
    sections: dict[str, set[str]] = {}
    current = None
    for line in block.splitlines()[1:]:
        m = re.match(r"^  (?:\d )?(\w+)/\s", line) or re.match(r"^    (\w+)/\s", line)
        root_module = re.match(r"^  (?:\d )?(\w+\.py)\s", line)
        if m:
            current = m.group(1)
        elif root_module:
            current = "."
            sections.setdefault(".", set()).add(root_module.group(1))
            continue
        if current is not None:
            sections.setdefault(current, set()).update(re.findall(r"\b((?:\w+/)*\w+\.py)\b", line))
    return sections


def package_modules() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {
        ".": {p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    }
    for sub in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        out[sub.name] = {p.relative_to(sub).as_posix() for p in sub.rglob("*.py") if p.name != "__init__.py"}
    return out


def test_architecture_map_lists_every_module_and_none_that_is_gone():
    listed, actual = map_sections(), package_modules()
    missing = {k: sorted(v - listed.get(k, set())) for k, v in actual.items() if v - listed.get(k, set())}
    gone = {k: sorted(v - actual.get(k, set())) for k, v in listed.items() if v - actual.get(k, set())}
    assert not missing, f"modules docs/architecture.md's map does not list: {missing}"
    assert not gone, f"docs/architecture.md's map lists modules that are not there: {gone}"

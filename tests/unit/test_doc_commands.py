"""Every `tunebench ...` line in README.md and docs/ parses as the CLI parses it, and a preset's overrides build a
config: an unknown flag, preset, key or value in the docs fails here. The lines that run on the packaged model are
run for real elsewhere (the Quick start by CI itself; README's own-data lines by an integration test)."""

from __future__ import annotations

import pytest
from doc_commands import check, commands

COMMANDS = commands()


def test_the_docs_hold_commands():
    assert len(COMMANDS) >= 20
    assert any(c.where.startswith("README.md") for c in COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: f"{c.where} {' '.join(c.argv)[:60]}")
def test_documented_command_parses(cmd):
    check(cmd)

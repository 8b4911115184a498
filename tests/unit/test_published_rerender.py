"""Published folders' Markdown re-renders from their JSON byte for byte: every data_report.md from its
data_report.json, every sweep.md from its sweep.json (reports/published/, no models, milliseconds).

The run reports (report.md) of the published runs were rendered by earlier versions of the suite, so they are not
pinned here; the golden file in test_render.py pins the report's rendering.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tunebench.core.io import read_json
from tunebench.data.data_report import read_report, render_report
from tunebench.reports.render_sweep import render_sweep

PUBLISHED = Path(__file__).resolve().parents[2] / "reports" / "published"
# rendered before tables went through core.markdown (padded columns): the same facts, other bytes
OLDER_DATA_REPORTS = {"2026-11-27-2xh100-ddp-smollm2", "2026-11-27-h200-smollm2-gpu"}
DATA_REPORTS = sorted(
    p.parent
    for p in PUBLISHED.rglob("data_report.json")
    if (p.parent / "data_report.md").is_file() and p.relative_to(PUBLISHED).parts[0] not in OLDER_DATA_REPORTS
)
SWEEPS = sorted(p.parent for p in PUBLISHED.rglob("sweep.json") if (p.parent / "sweep.md").is_file())


@pytest.mark.parametrize("folder", DATA_REPORTS, ids=lambda p: str(p.relative_to(PUBLISHED)))
def test_published_data_report_rerenders_the_same(folder):
    assert render_report(read_report(folder)) == (folder / "data_report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("folder", SWEEPS, ids=lambda p: str(p.relative_to(PUBLISHED)))
def test_published_sweep_report_rerenders_the_same(folder):
    assert render_sweep(read_json(folder / "sweep.json")) == (folder / "sweep.md").read_text(encoding="utf-8")


def test_there_is_something_to_rerender():
    assert len(DATA_REPORTS) >= 5 and SWEEPS

"""The data report: read back with the fields evaluation relies on checked, and its Markdown view."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

from tunebench.core.errors import MissingRunFile
from tunebench.core.io import check_json, read_json
from tunebench.core.markdown import table
from tunebench.data.encode import TemplateInfo


class _SplitFacts(TypedDict):
    fingerprint: str


class _ReportFacts(TypedDict):
    """What the evaluation reads from a data report: the template it was rendered with, the test tokens' hash."""

    fingerprint: str
    template: TemplateInfo
    splits: dict[str, _SplitFacts]


def read_report(out_dir: str | Path) -> dict[str, Any]:
    """The data report of a run folder, checked for what evaluation reads (template, split fingerprints).

    Raises:
        MissingRunFile: no data report (run the data step).
        RunFileError: damaged, or a field of the wrong type; names the field.
    """
    path = Path(out_dir) / "data_report.json"
    fix = f"re-run `tunebench data {path.parent.parent / 'config.yaml'} --out {path.parent.parent}`"
    if not path.exists():
        raise MissingRunFile(f"{path}: missing; {fix}")
    report = read_json(path, fix)
    check_json(report, _ReportFacts, str(path), fix)
    return report


def _malformed_line(report: dict[str, Any]) -> str:
    """``malformed: 3 (lines 7, 12, 40: line 7: not UTF-8 ...)``: where the unreadable lines are, and why."""
    shown, total = report["malformed_lines"], report.get("malformed_lines_total", len(report["malformed_lines"]))
    more = f", ... ({total} lines in all)" if total > len(shown) else ""
    why = "; ".join(report.get("malformed_reasons", [])[:3])
    return f"malformed: {report['dropped'].get('malformed', len(shown))} (lines {', '.join(map(str, shown))}{more})" + (
        f"; first: {why}" if why else ""
    )


def _format_line(report: dict[str, Any]) -> list[str]:
    """``- format: sharegpt (40 records; data.format: auto)``, or each format's count where records were mixed;
    nothing for a report written before formats were counted."""
    formats = report.get("formats")
    if not formats:
        return []
    asked = report.get("config", {}).get("format", "auto")
    if len(formats) == 1:
        ((name, n),) = formats.items()
        return [f"- format: {name} ({n} records; data.format: {asked})"]
    counts = ", ".join(f"{name} {n}" for name, n in formats.items())
    return [f"- formats: mixed, {counts} records (data.format: {asked})"]


def _shown(marker: str) -> str:
    """A marker as one line of inline code: ``<|im_end|>\\n`` (several tokens with a newline) keeps its newline
    visible instead of breaking the line."""
    return marker.replace("\n", "\\n")


def render_report(report: dict[str, Any]) -> str:
    """Markdown view of the data report (the JSON is the source of truth)."""
    lines = [
        "# Data report",
        "",
        f"- source: `{report['source']}` ({report['source_identity']})",
        f"- records read: {report['records']}; clean: {report['clean']}; "
        f"exact duplicates: {report['exact_duplicates']}",
        *_format_line(report),
        f"- template: `{report['template']['name']}` (end of turn `{_shown(report['template']['end_of_turn'])}`)",
        f"- fingerprint: `{report['fingerprint']}`",
        "",
        "## Dropped",
        "",
    ]
    reasons = report["drop_reasons"]
    dropped = [(k, v, reasons.get(k, "")) for k, v in report["dropped"].items()]
    dropped += [
        (f"{k} ({s})", v, reasons.get(k, "")) for s, c in report["dropped_by_length"].items() for k, v in c.items()
    ]
    lines += [table(dropped, ["reason", "conversations", "meaning"]), ""]
    if report.get("malformed_lines"):
        lines += [_malformed_line(report), ""]
    lines += ["## Splits", ""]
    splits = [
        (
            s,
            d["conversations"],
            d["truncated"],
            d["tokens"].get("p50"),
            d["tokens"].get("p90"),
            d["tokens"].get("max"),
            d["assistant_tokens"].get("total", 0),
            f"`{d['fingerprint']}`",
        )
        for s, d in report["splits"].items()
    ]
    lines.append(
        table(
            splits,
            [
                "split",
                "conversations",
                "truncated",
                "tokens p50",
                "tokens p90",
                "tokens max",
                "assistant tokens",
                "fingerprint",
            ],
        )
    )
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"

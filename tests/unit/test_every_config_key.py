"""Every config key through the command line: a value of the wrong type exits 2 naming the key, and edge values
(negative, zero, huge) are either taken or refused the same way; never a traceback. A bad value stops `tunebench run`
before anything is written."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from tunebench.app.cli import main
from tunebench.core import config_schema
from tunebench.core.config_schema import RunConfig


def leaf_keys(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, typing.Any]]:
    hints = typing.get_type_hints(cls, vars(config_schema))  # the sections' annotations name what it defines
    out = []
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out += leaf_keys(t, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, t))
    return out


def wrong_type(t: typing.Any) -> str | None:
    """A value no field of type ``t`` may take, or None for free text."""
    args = set(typing.get_args(t))
    if t in (int, float) or args in ({int, type(None)}, {float, type(None)}):
        return "not-a-number"
    if t is bool or bool in args:
        return "sometimes"
    if typing.get_origin(t) is typing.Literal:
        return "no-such-choice"
    if typing.get_origin(t) is list:
        (item,) = typing.get_args(t)
        if typing.get_origin(item) is typing.Literal:
            return "[no-such-choice]"
        if dataclasses.is_dataclass(item):
            return "[{name: x, temperature: -1}]"
        return "{not: a list}"
    if any(dataclasses.is_dataclass(a) for a in args):
        return "{base_url: ftp://nowhere, model: m}"
    return None  # str: any text is a value


KEYS = leaf_keys()
TYPED = [(k, wrong_type(t)) for k, t in KEYS if wrong_type(t) is not None]
NUMERIC = [
    k for k, t in KEYS if t in (int, float) or set(typing.get_args(t)) in ({int, type(None)}, {float, type(None)})
]


def test_the_walk_covers_the_config():
    assert len(KEYS) > 70 and len(TYPED) > 55 and "eval.judge.endpoint" in dict(TYPED)


@pytest.mark.parametrize(("key", "bad"), TYPED, ids=[k for k, _ in TYPED])
def test_a_value_of_the_wrong_type_exits_2_naming_the_key(key, bad, capsys):
    code = main(["config", "smoke", f"{key}={bad}"])
    err = capsys.readouterr().err
    assert code == 2, f"{key}={bad} was taken"
    assert "Traceback" not in err and key.rsplit(".", 1)[-1] in err, err


@pytest.mark.parametrize("value", ["-1", "0", "1e12"])
def test_edge_numbers_are_taken_or_refused_never_a_traceback(value, capsys):
    for key in NUMERIC:
        code = main(["config", "smoke", f"{key}={value}"])
        err = capsys.readouterr().err
        assert code in (0, 2) and "Traceback" not in err, f"{key}={value}: exit {code}\n{err[-2000:]}"
        if code == 2:
            assert key.rsplit(".", 1)[-1] in err, f"{key}={value}: {err}"


def test_a_bad_value_stops_run_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "smoke", "train.max_steps=not-a-number", "--out", str(out)]) == 2
    assert "train.max_steps" in capsys.readouterr().err and not out.exists()


def test_every_bad_value_stops_run_before_anything_is_written(tmp_path, capsys):
    for key, bad in TYPED:
        out = tmp_path / key
        code = main(["run", "smoke", f"{key}={bad}", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and not out.exists(), f"{key}={bad}: exit {code}\n{err[-2000:]}"


def test_a_contamination_ngram_below_the_checks_minimum_stops_run_before_anything_is_written(tmp_path, capsys):
    from tunebench.evals.contamination import MIN_SHINGLE_WORDS

    out = tmp_path / "run"
    assert main(["run", "smoke", f"eval.contamination_ngram={MIN_SHINGLE_WORDS - 1}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "eval.contamination_ngram" in err and "Traceback" not in err and not out.exists()

"""Probe files: expansion, every check kind, the sandbox, and errors that name file and line."""

from __future__ import annotations

import textwrap

import pytest
from jinja2.sandbox import SecurityError

from tunebench.core.errors import ProbeError
from tunebench.evals.probes.checks import CHECK_KINDS, Check, numbers_in
from tunebench.evals.probes.sets import load_probe_set, shipped_sets, wilson


def write(tmp_path, text: str, name: str = "set.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def one_check(tmp_path, check_yaml: str):
    """The single Check of a one-probe set whose checks list is ``check_yaml``."""
    path = write(
        tmp_path,
        "name: t\nprobes:\n  - id: p\n    template: hi\n    checks:\n"
        + textwrap.indent(textwrap.dedent(check_yaml).strip(), "      ")
        + "\n",
    )
    (prompt,) = load_probe_set(path).prompts
    (check,) = prompt.checks
    return check


# ----------------------------------------------------------------------------- the shipped set


def test_default_set_holds_the_seed_probe_and_variants():
    ps = load_probe_set("default")
    assert "default" in shipped_sets()
    assert 20 <= len(ps.prompts) <= 40
    seed = next(p for p in ps.prompts if p.id == "fibonacci")
    assert seed.text == "Continue the Fibonacci sequence: 1, 1, 2, 3, 5, 8,"
    assert [c.spec()["sequence"] for c in seed.checks] == [[13, 21, 34]]
    # the shipped seed check: the right continuation, restated prompt allowed; wrong or skipped numbers fail
    for ok in ("13, 21, 34", "13, 21, 34, 55, 89", "1, 1, 2, 3, 5, 8, 13, 21, 34", "Next: 13, 21 and 34."):
        assert seed.evaluate(ok) == [], ok
    for bad in ("13, 20", "13, 20, 33", "21, 34", "1, 1, 2, 3, 5, 8, 13, 20", "8, 13, 21, 34", "13, 21"):
        assert seed.evaluate(bad) != [], bad
    by_id = {p.id: p for p in ps.prompts}
    # continuations computed in the templates
    assert by_id["fibonacci-like[0]"].text.endswith("2, 1, 3, 4, 7, 11,")
    assert by_id["fibonacci-like[0]"].checks[0].value == [18, 29, 47]
    assert by_id["powers[0]"].checks[0].value == [32, 64, 128]
    assert by_id["squares-cubes[0]"].checks[0].value == [36, 49, 64]
    assert len({p.id for p in ps.prompts}) == len(ps.prompts)
    # the seed probe and its variants accept an answer that restates the given numbers first
    assert by_id["powers[0]"].evaluate("1, 2, 4, 8, 16, 32, 64, 128") == []
    assert by_id["no-made-up-doi"].evaluate("It is DOI:1999.10.1088.1083") != []
    assert by_id["no-made-up-doi"].evaluate("I cannot find a DOI for that paper.") == []
    assert load_probe_set("default").fingerprint == ps.fingerprint


def test_unknown_set_name_suggests_a_shipped_one():
    with pytest.raises(ProbeError, match=r"did you mean 'default'"):
        load_probe_set("defualt")


# ----------------------------------------------------------------------------- expansion


def test_vars_mapping_expands_as_cartesian_product_and_checks_are_templated(tmp_path):
    path = write(
        tmp_path,
        """
        name: t
        version: 3
        system: Be brief.
        probes:
          - id: add
            template: "What is {{ a }} + {{ b }}?"
            vars: {a: [1, 2], b: [10, 20, 30]}
            checks:
              - regex: '\\b{{ a + b }}\\b'
              - sequence: ["{{ a + b }}", "{{ a * b }}"]
    """,
    )
    ps = load_probe_set(path)
    assert (ps.name, ps.version) == ("t", "3")
    assert [p.id for p in ps.prompts] == [f"add[{i}]" for i in range(6)]
    last = ps.prompts[-1]
    assert last.vars == {"a": 2, "b": 30}
    assert last.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 30?"}]
    assert last.checks[0].value == r"\b32\b"
    assert last.checks[1].value == [32, 60]
    assert last.evaluate("It is 32, and 60.") == []


def test_vars_list_of_mappings_and_macros(tmp_path):
    path = write(
        tmp_path,
        """
        name: t
        macros: |
          {%- macro twice(x) -%}{{ x * 2 }}{%- endmacro %}
        probes:
          - id: cap
            template: "Capital of {{ country }}? Double {{ twice(n) }}."
            vars:
              - {country: France, capital: Paris, n: 2}
              - {country: Japan, capital: Tokyo, n: 5}
            checks:
              - contains: "{{ capital }}"
                ignore_case: true
          - id: plain
            template: "Hello"
            checks: [{max_words: 5}]
    """,
    )
    ps = load_probe_set(path)
    assert [p.id for p in ps.prompts] == ["cap[0]", "cap[1]", "plain"]
    assert ps.prompts[1].text == "Capital of Japan? Double 10."
    assert ps.prompts[1].evaluate("tokyo.") == []
    assert ps.prompts[1].evaluate("Kyoto") == ["contains: missing ['Tokyo']"]
    assert ps.probe_ids == ["cap", "plain"]


def test_fingerprint_covers_checks(tmp_path):
    a = load_probe_set(write(tmp_path, "probes: [{id: p, template: hi, checks: [{max_words: 5}]}]", "a.yaml"))
    b = load_probe_set(write(tmp_path, "probes: [{id: p, template: hi, checks: [{max_words: 6}]}]", "b.yaml"))
    c = load_probe_set(write(tmp_path, "probes: [{id: p, template: hi, checks: [{max_words: 5}]}]", "c.yaml"))
    assert a.name == "a" and a.fingerprint != b.fingerprint
    assert c.fingerprint != a.fingerprint  # the set name is part of it
    assert load_probe_set(tmp_path / "a.yaml").fingerprint == a.fingerprint


# ----------------------------------------------------------------------------- check kinds


FIB = Check("sequence", [13, 21, 34])


@pytest.mark.parametrize("answer", ["13, 21, 34, 55", "The next numbers are 13, 21 and 34.", "13\n21\n34"])
def test_sequence_accepts_the_right_continuation(answer):
    assert FIB(answer, "Continue the Fibonacci sequence: 1, 1, 2, 3, 5, 8,") is None


@pytest.mark.parametrize("answer", ["13, 20, 33", "21, 34", "1, 1, 2, 3, 5, 8, 13, 21, 34", "13, 21", "none"])
def test_sequence_rejects_wrong_skipped_or_echoed_numbers(answer):
    assert FIB(answer, "Continue the Fibonacci sequence: 1, 1, 2, 3, 5, 8,") is not None


def test_sequence_allow_echo_skips_a_repeated_prompt(tmp_path):
    check = one_check(tmp_path, "- sequence: [13, 21, 34]\n  allow_echo: true")
    prompt = "Continue: 1, 1, 2, 3, 5, 8,"
    assert check("1, 1, 2, 3, 5, 8, 13, 21, 34", prompt) is None
    assert check("13, 21, 34", prompt) is None
    assert check("8, 13, 21, 34", prompt) is not None


def test_numbers_in_reads_signs_decimals_and_sentence_ends():
    assert numbers_in("then -3, 2.5 and 34. v2 x-5 1-2") == [-3, 2.5, 34, 5, 1, 2]


CHECK_CASES = [
    ("- contains: [Paris, France]", "Paris, France", "Paris"),
    ("- contains: paris\n  ignore_case: true", "PARIS", "Lyon"),
    ("- contains: paris", "paris", "Paris"),
    ("- contains_any: [hello, hi]", "oh hi", "hey"),
    ("- not_contains: [Sydney, Melbourne]", "Canberra", "Not Sydney"),
    ("- not_contains: sydney\n  ignore_case: true", "Canberra", "SYDNEY"),
    ("- regex: '^\\d+$'", "42", "42 apples"),
    ("- regex: '^yes'\n  ignore_case: true", "Yes.", "No."),
    ("- not_regex: '\\d'", "eight", "8"),
    ("- sequence: '32 64 128'", "32, 64, 128", "32, 64, 127"),
    ("- max_words: 3", "one two three", "one two three four"),
    ("- max_chars: 5", "  12345 ", "123456"),
]


@pytest.mark.parametrize(("check_yaml", "passing", "failing"), CHECK_CASES)
def test_every_check_kind(tmp_path, check_yaml, passing, failing):
    check = one_check(tmp_path, check_yaml)
    assert check(passing) is None
    reason = check(failing)
    assert reason and reason.startswith(check.kind)


def test_every_kind_is_covered(tmp_path):
    """The parametrized cases above exercise every check kind the probe loader knows (read from the cases)."""
    covered = {one_check(tmp_path, check_yaml).kind for check_yaml, _, _ in CHECK_CASES}
    assert covered == set(CHECK_KINDS)


def test_all_checks_of_a_probe_must_pass(tmp_path):
    path = write(
        tmp_path,
        """
        probes:
          - id: p
            template: hi
            checks:
              - contains: blue
              - max_words: 2
    """,
    )
    (prompt,) = load_probe_set(path).prompts
    assert prompt.evaluate("blue") == []
    assert prompt.evaluate("the sky is blue") == ["max_words: 4 words > 2"]
    assert len(prompt.evaluate("the sky is red")) == 2


# ----------------------------------------------------------------------------- sandbox and errors


def test_sandbox_blocks_python_internals(tmp_path):
    path = write(
        tmp_path,
        """
        probes:
          - id: evil
            template: "{{ ''.__class__.__mro__ }}"
            checks: [{max_words: 1}]
    """,
    )
    with pytest.raises(SecurityError) as err:
        load_probe_set(path)
    assert isinstance(err.value, ProbeError)
    assert f"{path}:3" in str(err.value) and "sandbox" in str(err.value)


def test_sandbox_blocks_mutation(tmp_path):
    path = write(
        tmp_path,
        """
        probes:
          - id: evil
            template: "{% set l = [1] %}{{ l.append(2) }}"
            checks: [{max_words: 1}]
    """,
    )
    with pytest.raises(SecurityError):
        load_probe_set(path)


def test_broken_yaml_names_file_and_line(tmp_path):
    path = write(
        tmp_path,
        """
        name: t
        probes:
          - id: p
            template: "unclosed
            checks: [{max_words: 1}]
          - id: q
    """,
    )
    with pytest.raises(ProbeError, match=r"not valid YAML") as err:
        load_probe_set(path)
    msg = str(err.value)
    assert str(path) in msg
    line = int(msg.split(f"{path}:")[1].split(":")[0])
    assert 4 <= line <= 7


def test_unquoted_jinja_value_is_explained(tmp_path):
    path = write(tmp_path, "probes:\n  - id: p\n    template: {{ x }}\n    checks: [{max_words: 1}]\n")
    with pytest.raises(ProbeError, match=r"must be quoted") as err:
        load_probe_set(path)
    assert f"{path}:3:" in str(err.value)


def test_jinja_syntax_error_names_probe_and_template_line(tmp_path):
    path = write(
        tmp_path,
        """
        name: t
        probes:
          - id: ok
            template: fine
            checks: [{max_words: 1}]
          - id: broken
            template: |
              first line
              second {{ oops ( }}
            checks: [{max_words: 1}]
    """,
    )
    with pytest.raises(ProbeError, match=r"Jinja syntax error") as err:
        load_probe_set(path)
    assert f"{path}:9:" in str(err.value)  # the file line of "second {{ oops ( }}"
    assert "'broken'" in str(err.value)


def test_undefined_variable_names_probe_line_and_suggests(tmp_path):
    path = write(
        tmp_path,
        """
        probes:
          - id: cap
            template: "Capital of {{ contry }}?"
            vars: {country: [France]}
            checks: [{max_words: 1}]
    """,
    )
    with pytest.raises(ProbeError) as err:
        load_probe_set(path)
    msg = str(err.value)
    assert f"{path}:3:" in msg and "'cap'" in msg and "'contry'" in msg and "did you mean 'country'" in msg


def test_undefined_variable_in_a_check(tmp_path):
    path = write(
        tmp_path,
        """
        probes:
          - id: cap
            template: "Capital of {{ country }}?"
            vars: {country: [France]}
            checks:
              - contains: "{{ capitol }}"
    """,
    )
    with pytest.raises(ProbeError, match=r"undefined variable 'capitol'") as err:
        load_probe_set(path)
    assert f"{path}:6:" in str(err.value)


def test_unknown_check_kind_lists_known_ones_with_did_you_mean(tmp_path):
    path = write(
        tmp_path,
        """
        probes:
          - id: p
            template: hi
            checks:
              - contians: hello
    """,
    )
    with pytest.raises(ProbeError) as err:
        load_probe_set(path)
    msg = str(err.value)
    assert f"{path}:5:" in msg and "did you mean 'contains'" in msg
    assert all(kind in msg for kind in CHECK_KINDS)


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ("probes:\n  - id: p\n    templte: hi\n    checks: [{max_words: 1}]\n", r":3: .*did you mean 'template'"),
        ("probes:\n  - id: p\n    template: hi\n    checks: [{regex: '('}]\n", r":4: .*invalid regular expression"),
        ("probes:\n  - id: p\n    template: hi\n    checks: [{sequence: [a]}]\n", r"needs numbers"),
        ("probes:\n  - id: p\n    template: hi\n    checks: [{max_words: 3, allow_echo: true}]\n", r"does not apply"),
        ("probes:\n  - id: p\n    template: hi\n    checks: [{max_words: 3, max_chars: 4}]\n", r"exactly one kind"),
        (
            "probes:\n  - {id: p, template: a, checks: [{max_words: 1}]}\n"
            "  - {id: p, template: b, checks: [{max_words: 1}]}\n",
            r"unique `id`",
        ),
        ("probes:\n  - id: p\n    template: hi\n    checks: [{max_words: -1}]\n", r"whole number >= 0"),
        ("probes: []\n", r"non-empty `probes:`"),
        ("probes:\n  - id: p\n    template: hi\n    vars: {x: []}\n    checks: [{max_words: 1}]\n", r"no prompts"),
    ],
)
def test_other_mistakes_are_reported_with_a_fix(tmp_path, body, pattern):
    with pytest.raises(ProbeError, match=pattern):
        load_probe_set(write(tmp_path, body))


# ----------------------------------------------------------------------------- statistics


def test_wilson_interval():
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and 0.25 < wilson(0, 10)[1] < 0.35
    assert wilson(10, 10)[1] == 1.0
    assert wilson(0, 0) == (0.0, 1.0)


def test_auto_cache_compiles_only_calls_long_enough_to_repay_it():
    """auto: static on CUDA for >= STATIC_MIN_STEPS decode steps or an open-ended chat; dynamic on CPU, for short
    calls and for 4-bit weights; an explicit choice is taken as given."""
    from types import SimpleNamespace

    from tunebench.evals.decode_loops import STATIC_MIN_STEPS, use_static_cache

    def on(device, four_bit=False):
        return SimpleNamespace(model=SimpleNamespace(device=device), device=device, load_in_4bit=four_bit)

    gpu, cpu = on("cuda:0"), on("cpu")
    assert use_static_cache(gpu, "auto", STATIC_MIN_STEPS) and use_static_cache(gpu, "auto", None)
    assert not use_static_cache(gpu, "auto", 2 * 64)  # the default probe run: 2 calls of 64 tokens
    assert not use_static_cache(cpu, "auto", 10 * STATIC_MIN_STEPS)
    assert not use_static_cache(on("cuda:0", four_bit=True), "auto", 10 * STATIC_MIN_STEPS)
    assert use_static_cache(cpu, "static", 1) and not use_static_cache(gpu, "dynamic", None)

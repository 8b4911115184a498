"""Probes: prompts with objective checks of their answers, pass rates with Wilson intervals. Import each name from
the module that holds it; this package re-exports nothing.

- ``sets``: probe sets read and checked (``load_probe_set``, ``shipped_sets``) and run (``run_probes``,
  ``pass_rate``, ``wilson``).
- ``checks``: the check kinds (``CHECK_KINDS``): parsed from a probe file, then called on each answer.
- ``template``: the probe files' machinery: YAML that remembers line numbers, Jinja in an immutable sandbox (the
  judge's templates render in it too).
- ``*.yaml``: the shipped probe sets (package data; ``default.yaml`` shows every field).
"""

"""The application: what each `tunebench` command does, built on the floors below.

``pipeline`` (the stages of `tunebench run`, each cached by fingerprint, and ``finish``: compare, gate, report),
``stages`` (stages.json), ``preflight`` (everything checkable before a model loads), ``eval_settings`` (a run's
config as evaluation reads it), ``cli_parser`` / ``cli`` / ``cli_eval`` / ``cli_notes`` (the command line),
``serve`` (`tunebench serve`), ``ranks`` and ``shards`` (several processes), ``sweep*`` (`tunebench sweep`).
Nothing below imports it.
"""

"""Rendering: the run's report (Markdown from ``templates/``, tables, plots), the sweep's, and the evaluation's
metrics sent to trackers. It decides nothing: the statistics come from ``tunebench.compare`` and the verdicts from
``tunebench.gate``, the floors below it.
"""

"""Base vs tuned, paired: the statistics that produce a ``Comparison``.

``rows`` compares one metric (paired interval, p-value, verdict, minimum detectable effect; a judge's win rate as a
row; one gate rule, ``rule``, decided on one row), ``comparison`` turns two ``Results`` into a ``Comparison``
(several adapters into a ``Leaderboard``), ``runs`` reads a run folder's results (adapter, exported artifacts, served
endpoints) and compares them at the run's own settings, ``per_item`` finds the items that changed most, and
``selection`` picks a sweep's configuration with the same paired statistics. Nothing here renders or decides a
release: that is ``tunebench.reports`` and ``tunebench.gate``, above this floor.
"""

"""The release gate: rules over a run's ``Comparison`` decide, on confidence bounds, whether an adapter may ship.

``rules`` reads and checks rules files, ``verdict`` judges a run folder (``judge_run``, ``gate_main``: pass, fail,
inconclusive, with exit codes), ``files`` reads verdict files back, ``quality`` offers the same decisions as test
assertions, and ``pytest_plugin`` hands them to pytest (the ``tunebench`` plugin). The statistics it reads come from
``tunebench.compare``, below this floor; the report (``tunebench.reports``) renders its verdicts, above it.
"""

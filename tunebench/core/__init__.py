"""The floor everything stands on: config (``config``: load_config, RunConfig and its sections), safe files
(``io``), errors and exit codes (``errors``), statistics (``stats``, ``pairwise``, ``multiplicity``,
``matched_pairs``), runtime names and labels (``runtimes``), locks, processes, progress and logging. It imports no
other tunebench package.
"""

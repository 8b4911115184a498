"""Benchmarks (`tunebench bench ...`): training, evaluation, judge and serving speed on a GPU, and the statistics'
calibration by simulation; beside the application and never imported by it. ``cli`` is the entry, ``worker``'s
``WORKERS`` table the registry of what can be timed.
"""

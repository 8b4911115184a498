"""What a run's results are turned into: the paired comparison, the gate's verdicts and the pytest plugin, and their
rendering (report.md, plots, tracking).
"""

"""The pairwise judge: base and tuned answer the same prompts, a judge compares each pair in both orders. Import each
name from the module that holds it; this package re-exports nothing.

- ``stage``: the judge stage (``run_judge``), the ``Judge`` contract, the in-process judge, its fingerprint.
- ``prompts``: prompt sets, MT-Bench's pairwise judge prompts, planted sanity pairs, verdict parsing.
- ``logprobs``: verdicts read from the judge's next-token probabilities (``eval.judge.verdict: logprobs``).
- ``metrics``: judged records -> ``judge/<set>/win_rate`` metrics, validity, position bias.
- ``data/``: package data: ``mt_bench_pairwise.yaml`` (MT-Bench's prompts) and ``sanity.yaml`` (planted pairs).
"""

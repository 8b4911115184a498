"""What is measured, on any runtime: ``driver`` (the one evaluation driver, the ``Runtime`` contract and the runtimes'
registry), ``settings`` (``EvalSettings``: what evaluation reads of a run's config), ``families`` (the evaluation
families' registry: what each produces and how it is measured), the families themselves (``perplexity``,
``probes``, lm-eval, the judge, ``parity``, ``contamination``) and the runtimes (``runner``: transformers,
``llamacpp_eval``: llama.cpp, ``served``: an OpenAI-compatible endpoint) with their generation (``generation``,
``decoding``, ``decode_loops``). docs/architecture.md says how to add a family or a runtime.
"""

"""tunebench: fine-tune a chat model with LoRA/QLoRA and prove, with paired statistics, whether the fine-tune beats its
base, and whether what ships behaves like what was evaluated.

The floors, each importing only those below (docs/architecture.md): ``cli`` → ``app`` | ``bench`` → ``reports`` →
``gate`` → ``compare`` → ``train`` | ``evals`` → ``data`` | ``models`` → ``core``. The command line is ``tunebench``
(``cli``); the pytest plugin is ``gate.pytest_plugin``.
"""

"""`python -m tunebench ...` is the `tunebench` command (what torchrun and accelerate launch run)."""

import sys

from tunebench.cli import main

sys.exit(main())

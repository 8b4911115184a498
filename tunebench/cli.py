"""The `tunebench` command's entry point: `tunebench bench ...` goes to the GPU benchmarks, every other
subcommand to the application. The benchmarks sit beside the application and are never imported by it."""

from __future__ import annotations

import sys

from tunebench.app import cli as app_cli
from tunebench.bench import cli as bench_cli


def main(argv: list[str] | None = None) -> int:
    """Run one `tunebench` subcommand and return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return bench_cli.main(argv[1:])
    return app_cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())

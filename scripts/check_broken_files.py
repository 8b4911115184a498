"""A new user's own broken files, kept outside the project: every file of the fuzz suite (tests/fixtures/
fuzz_cases.py: 17 kinds of file, each broken in every way that applies) is written into a folder outside this
checkout (a new temporary one by default) and handed to the commands that read it, in worker processes that call
tunebench's `main` under a 2 GiB address-space cap (tests/fixtures/fuzz_worker.py). One line per case; the exit
status is 0 when every broken file exited 2 with one paragraph naming it and left every file as it was, and every
BOM/CRLF spelling read as the plain file.

    python scripts/check_broken_files.py [FOLDER] [--keep]     # --keep: leave each case's files in FOLDER
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT), str(PROJECT / "tests" / "fixtures")]

import fuzz_cases  # noqa: E402  (tests/fixtures, put on the path above)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", help="where the broken files go (outside the project; default: a new temp)")
    ap.add_argument("--keep", action="store_true", help="leave each case's folder (its run folder and files)")
    args = ap.parse_args()
    root = Path(args.folder or tempfile.mkdtemp(prefix="tunebench-broken-")).resolve()
    if root == PROJECT or PROJECT in root.parents:
        ap.error(f"{root} is inside the project; give a folder outside {PROJECT}")
    root.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    jobs = fuzz_cases.jobs()
    outcomes = fuzz_cases.run_workers(jobs, fuzz_cases.make_template(root / "template"), root, 2, args.keep)
    failed = 0
    for job in jobs:
        r = outcomes[fuzz_cases.job_id(job)]
        plain = outcomes.get(fuzz_cases.job_id({**job, "case": "good"}))
        problems = fuzz_cases.problems(r, plain)
        failed += bool(problems)
        shown = "; ".join(problems) if problems else (fuzz_cases.paragraphs(r) or [f"exit {r['code']}"])[0]
        print(f"{'FAIL' if problems else 'ok  '} {fuzz_cases.job_id(job):<55} exit {r['code']}  {shown[:160]}")
    broken = sum(j["case"] in fuzz_cases.CASES for j in jobs)
    print(
        f"\n{len(jobs) - failed} of {len(jobs)} cases as they must be ({broken} broken files, the rest BOM/CRLF "
        f"spellings and their plain files) in {time.monotonic() - start:.0f} s; files under {root}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

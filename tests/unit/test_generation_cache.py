"""Two evaluations sharing one generation cache at once: each merges its answers under the cache's lock, batch by
batch, so the file ends with every answer of both and is never half-written. Real processes, no model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tunebench.evals.generation_cache import GenerationCache

WRITER = textwrap.dedent("""
    import sys
    from tunebench.evals.generation_cache import GenerationCache
    root, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    group = {"model": "m", "sampling": "s", "seed": 1}
    for b in range(n):  # one put per batch, as generate() does
        c = GenerationCache(root, group)
        c.put_many({f"{who}-{b}-{k}#0": {"text": f"{who} {b} {k}", "new_tokens": k} for k in range(4)})
""")


def test_two_processes_writing_one_cache_keep_every_answer(tmp_path):
    n = 60
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), who, str(n)]) for who in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    cache = GenerationCache(tmp_path, {"model": "m", "sampling": "s", "seed": 1})
    assert len(cache.entries) == 2 * n * 4
    assert cache.get([], 0) is None
    data = json.loads(cache.path.read_text(encoding="utf-8"))
    assert data["entries"]["a-59-3#0"] == {"text": "a 59 3", "new_tokens": 3}
    assert data["entries"]["b-0-0#0"] == {"text": "b 0 0", "new_tokens": 0}
    assert not list(tmp_path.glob("*.tmp"))

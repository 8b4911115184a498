#!/usr/bin/env bash
# Builds the wheel, installs it (not editable) into a fresh virtual environment, and uses it from a folder
# whose own train.py, reports/, gate/, compare/ and evals/ would shadow generic package names: presets, config, the
# release gate on a stored real run folder, and the pytest plugin's fixtures. Fails when the wheel carries anything
# outside tunebench/ and its dist-info.  Usage: bash scripts/check-wheel.sh   (PYTHON picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pipq=(--disable-pip-version-check -q)

"$py" -m pip wheel "${pipq[@]}" --no-deps --no-build-isolation -w "$work/dist" . >/dev/null
wheel=$(ls "$work"/dist/tunebench-*.whl)
echo "wheel: $(basename "$wheel")"
outside=$("$py" - "$wheel" <<'PY'
import re, sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
bad = [n for n in names if not re.match(r"^(tunebench/|tunebench-[^/]+\.dist-info/)", n)]
need = ["tunebench/configs/smoke.yaml", "tunebench/configs/gates/default.yaml", "tunebench/configs/spaces/smoke.yaml",
        "tunebench/models/templates/llama-3.1.jinja",
        "tunebench/evals/probes/default.yaml", "tunebench/reports/templates/report.md.j2",
        "tunebench/evals/lm_eval/tasks/tunebench.yaml", "tunebench/evals/lm_eval/tasks/facts_mc.jsonl",
        "tunebench/evals/judge/data/sanity.yaml", "tunebench/evals/judge/data/mt_bench_pairwise.yaml"]
missing = [n for n in need if n not in names]
print("\n".join([f"outside tunebench/: {n}" for n in bad] + [f"missing package data: {n}" for n in missing]))
PY
)
if [ -n "$outside" ]; then echo "$outside"; exit 1; fi

"$py" -m venv "$work/venv"
v="$work/venv/bin"
"$v/python" -m pip install "${pipq[@]}" ${TORCH_SPEC:-torch==2.13.0}
"$v/python" -m pip install "${pipq[@]}" "$wheel" "pytest>=8"

# a user's project folder: generic names that must not shadow tunebench's modules
proj="$work/project"
mkdir -p "$proj/reports" "$proj/gate" "$proj/compare" "$proj/evals" "$proj/tests"
echo 'raise SystemExit("the user train.py was imported instead of tunebench")' > "$proj/train.py"
for pkg in reports gate compare; do
  echo "raise ImportError(\"the user $pkg/ package was imported instead of tunebench\")" > "$proj/$pkg/__init__.py"
done
touch "$proj/evals/__init__.py"
run="$proj/stored-run"
pub="$root/reports/published/2026-11-27-h200-smollm2-gpu"
mkdir -p "$run/eval/base" "$run/eval/tuned"
cp "$pub/config.yaml" "$run/"
cp "$pub/results-base.json" "$run/eval/base/results.json"
cp "$pub/results-tuned.json" "$run/eval/tuned/results.json"
cat > "$proj/tests/test_quality.py" <<'PY'
def test_perplexity_improved(tunebench_comparison):
    tunebench_comparison.row("perplexity/test").assert_improved()


def test_run_folder_fixture(tunebench_run):
    assert (tunebench_run / "eval" / "tuned" / "results.json").is_file()
PY

cd "$proj"
export PYTHONPATH="$proj"  # the project folder first on the path, as `python -m pytest` puts it
presets=$("$v/tunebench" presets)
for p in smoke smollm2-gpu llama-3.2-1b-finetome llama-3.2-3b-finetome; do
  grep -qx "$p" <<<"$presets" || { echo "tunebench presets misses $p:"; echo "$presets"; exit 1; }
done
"$v/tunebench" config smoke | grep -q "^name: smoke" || { echo "tunebench config smoke failed"; exit 1; }
set +e
"$v/tunebench" gate "$run"
code=$?
set -e
case $code in 0|1|3) echo "gate on the stored run folder: exit $code";; *) echo "gate failed to judge (exit $code)"; exit 1;; esac
"$v/python" -m pytest -p no:cacheprovider -q tests/test_quality.py --tunebench-run="$run"
fp='from tunebench.core.io import source_fingerprint; print(source_fingerprint())'
installed=$("$v/python" -c "$fp")
checkout=$(cd "$root" && "$py" -c "$fp")
[ "$installed" = "$checkout" ] || { echo "source fingerprint: wheel $installed, checkout $checkout"; exit 1; }
echo "source fingerprint $installed: the wheel carries the checkout's code"
echo "wheel check passed"

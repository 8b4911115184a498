#!/usr/bin/env bash
# SIGKILL `tunebench run PRESET` at N seeded moments, re-run after each, and check that the completed run equals an
# uninterrupted one value for value: scripts/crash-test.sh PRESET N [--seed S] [--work DIR] [key=value ...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py=${PYTHON:-"$root/.venv/bin/python"}
[ -x "$py" ] || py=python3
exec "$py" "$root/scripts/crash_test.py" "$@"

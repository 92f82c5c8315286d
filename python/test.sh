#!/usr/bin/env bash
# Builds the Python package into a virtualenv (target/py-venv, made and
# filled from PyPI on first use: python/requirements-test.txt) and runs its
# pytest suite. Usage: bash python/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -r python/requirements-test.txt
(cd python && cargo fmt -- --check && cargo clippy --release -q -- -D warnings)
(cd python && VIRTUAL_ENV="$PWD/../$venv" PATH="$PWD/../$venv/bin:$PATH" maturin develop --release -q)
"$venv/bin/python" -m pytest -q -rs python/tests "$@"

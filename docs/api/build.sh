#!/bin/sh
# Builds the API reference (docs/api) from the docstrings, with every Sphinx
# warning an error. Usage: docs/api/build.sh [OUTPUT_DIR]  (default: a new
# temporary directory). PYTHON selects the interpreter (default: the
# repository's .venv, else python3); Sphinx is installed into it if missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python=$root/.venv/bin/python; else python=python3; fi
fi
if ! "$python" -c "import sphinx" 2>/dev/null; then
    "$python" -m pip install -q "sphinx>=7.0"
fi
out=${1:-$(mktemp -d)}
"$python" -m sphinx -W --keep-going -q -E -b html -d "$out/doctrees" "$here" "$out/html"
echo "API reference: $out/html/index.html"

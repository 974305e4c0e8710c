#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend (the backend is fixed per process).
# Fails if any run fails or collects no test (pytest exit code 5).
# Usage: scripts/test.sh [pytest args...]   (BACKENDS="jax torch" to choose)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[[ -x $PY ]] || PY=python3
# JAX compiles every jitted forward/training step per shape (and Keras' own
# initialisers, for models rebuilt by from_config/load_model); a persistent
# compilation cache shared by the runs and by the subprocesses of the cross-backend
# tests saves those compiles once warm. It changes no result.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/keras-inception/jax}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
status=0
for backend in ${BACKENDS:-tensorflow jax torch}; do
  echo "=== KERAS_BACKEND=$backend"
  start=$SECONDS
  KERAS_BACKEND=$backend TF_CPP_MIN_LOG_LEVEL=2 "$PY" -m pytest -q -p no:cacheprovider --durations=15 "$@"
  code=$?
  echo "=== $backend: exit $code in $((SECONDS - start)) s"
  if [[ $code -eq 5 ]]; then
    echo "=== $backend collected no test: that is a failure"
  fi
  [[ $code -ne 0 ]] && status=1
done
exit $status

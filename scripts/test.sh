#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend (the backend is fixed per process).
# Fails if any run fails or collects no test (pytest exit code 5).
# Usage: scripts/test.sh [pytest args...]
#   BACKENDS="jax torch"  the backends to run (default: jax tensorflow torch)
#   JOBS=N                backend passes run at once (default: one per CPU core and per
#                         8 GiB of available memory, at least 1). One pass keeps 2
#                         cores only ~55 % busy (compiling, tracing, subprocesses);
#                         two at once took 20 min instead of 30 on the 2-core CI
#                         machine, at a peak of 15 GiB. With JOBS=1 each pass prints
#                         live; with more, each pass's log is printed when it ends.
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
# Longest pass first (JAX compiles most), so the others fill the remaining cores.
read -r -a backends <<< "${BACKENDS:-jax tensorflow torch}"
if [[ -z ${JOBS:-} ]]; then
  JOBS=$(nproc 2>/dev/null || echo 1)
  memory_gib=$(awk '/^MemAvailable:/ {print int($2 / 1048576)}' /proc/meminfo 2>/dev/null)
  (( ${memory_gib:-8} / 8 < JOBS )) && JOBS=$(( ${memory_gib:-8} / 8 ))
fi
jobs=$JOBS
(( jobs >= 1 )) || jobs=1
logs=$(mktemp -d "${TMPDIR:-/tmp}/keras-inception-tests.XXXXXX")
declare -A pid_of=()
stop_passes() {  # no pass outlives this script (Ctrl-C, or a CI job killed on timeout)
  local pid
  for pid in "${pid_of[@]}"; do
    pkill -TERM -P "$pid" 2>/dev/null
    kill -TERM "$pid" 2>/dev/null
  done
  rm -rf "$logs"
}
trap stop_passes EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
start_all=$SECONDS

run_pass() {  # backend: one pytest session, its exit code in $logs/<backend>.code
  local backend=$1 start=$SECONDS code
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend TF_CPP_MIN_LOG_LEVEL=2 "$PY" -m pytest -q -p no:cacheprovider \
    --durations=15 "${@:2}"
  code=$?
  echo "=== $backend: exit $code in $((SECONDS - start)) s"
  [[ $code -eq 5 ]] && echo "=== $backend collected no test: that is a failure"
  echo "$code" > "$logs/$backend.code"
}

reap() {  # waits for a pass to end, then prints the log of every pass that has ended
  local b
  wait -n
  for b in "${!pid_of[@]}"; do
    if ! kill -0 "${pid_of[$b]}" 2>/dev/null; then
      cat "$logs/$b.log"
      unset "pid_of[$b]"
    fi
  done
}
for backend in "${backends[@]}"; do
  if (( jobs == 1 )); then
    run_pass "$backend" "$@"
    continue
  fi
  while (( ${#pid_of[@]} >= jobs )); do reap; done
  echo "=== started KERAS_BACKEND=$backend (log printed when it ends)"
  run_pass "$backend" "$@" > "$logs/$backend.log" 2>&1 &
  pid_of[$backend]=$!
done
while (( ${#pid_of[@]} > 0 )); do reap; done

status=0
for backend in "${backends[@]}"; do
  code=$(cat "$logs/$backend.code" 2>/dev/null || echo missing)
  echo "=== $backend: exit $code"
  [[ $code == 0 ]] || status=1
done
echo "=== all passes in $((SECONDS - start_all)) s (JOBS=$jobs)"
exit $status

#!/usr/bin/env bash
# Run a command with ONCEFLOW_BOOTSTRAP_SERVERS pointing at a Kafka broker, and exit with its status.
#
# If ONCEFLOW_BOOTSTRAP_SERVERS is already set, that broker is used as is. Otherwise a fresh
# single-node broker (KAFKA_VERSION, default 3.9.1) starts on free loopback ports in a temp dir and
# is stopped afterwards, whatever happens; its data dir is kept only when the command failed.
#
#   scripts/with_broker.sh .venv/bin/pytest -m "not soak"
set -euo pipefail

if [[ -n "${ONCEFLOW_BOOTSTRAP_SERVERS:-}" ]]; then
  echo "with_broker: using ONCEFLOW_BOOTSTRAP_SERVERS=$ONCEFLOW_BOOTSTRAP_SERVERS" >&2
  exec "$@"
fi

kafka=("${PYTHON:-python3}" "$(dirname "$0")/kafka_local.py")
data_dir="$(mktemp -d "${TMPDIR:-/tmp}/onceflow-broker.XXXXXX")"
status=1

cleanup() {
  "${kafka[@]}" stop --data-dir "$data_dir" >/dev/null || true
  if [[ $status -eq 0 ]]; then
    rm -rf "$data_dir"
  else
    echo "with_broker: broker logs kept in $data_dir/node-1/logs" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r port controller_port <<<"$("${kafka[@]}" free-ports 2)"
started=$SECONDS
result="$("${kafka[@]}" start --data-dir "$data_dir" --port "$port" --controller-port "$controller_port")"
export ONCEFLOW_BOOTSTRAP_SERVERS="${result##*bootstrap=}"
echo "with_broker: Kafka ${KAFKA_VERSION:-3.9.1} up at $ONCEFLOW_BOOTSTRAP_SERVERS" \
  "in $((SECONDS - started)) s (data in $data_dir)" >&2

set +e
"$@"
status=$?
set -e
exit "$status"

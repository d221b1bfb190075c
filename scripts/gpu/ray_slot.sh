#!/usr/bin/env bash
# Run one verl job beside others on the same host: the command gets a Ray cluster of its own (slot SLOT: its
# own ports and temp dir) whose next job id is SLOT, and RAY_ADDRESS pointing at it.
#
#   bash scripts/gpu/ray_slot.sh SLOT command [args...]        # SLOT = 1, 2, ... (one per concurrent job)
#
# Why: verl names the socket of its colocated weight sync /tmp/rl-colocate-zmq-<Ray job id>-replica-0-rank-0.sock.
# Every fresh local cluster numbers its jobs from 01000000, so two verl jobs that each start their own cluster
# share that socket and both hang in update_weights (docs/results/needle/attempt4/README.md). Here short driver
# connections use up ids until the next one is SLOT + 1 modulo RAY_SLOT_STRIDE, so concurrent slots never share one. A cluster of one's own
# keeps each job's GPU accounting whole (one shared cluster would give the GPU to one job at a time).
# The cluster runs in the foreground (`ray start --block`) in this script's process group: it ends with the
# command, and a `timeout` or `kill -- -PGID` of the caller takes all of it down. It inherits this script's
# environment, so variables verl reads in its Ray workers (VERL_FILE_LOGGER_PATH, ...) must be set before it.
# Knobs: RAY_SLOT_BASE_PORT (6500; slot k uses 20 ports from base + 20k), RAY_SLOT_DIR (/tmp/ray_slot; temp dir
# base: keep it short, Ray's socket paths under it must fit AF_UNIX's 107 bytes), RAY_SLOT_NUM_GPUS (all the host's GPUs are each cluster's), RAY_SLOT_START_S (90: wait for the head),
# RAY_SLOT_STRIDE (16: at most that many slots side by side).
set -uo pipefail
SLOT=${1:?usage: ray_slot.sh SLOT command [args...]}
shift
[ "$#" -gt 0 ] || { echo "ray_slot.sh: no command" >&2; exit 2; }
case $SLOT in '' | *[!0-9]* | 0) echo "ray_slot.sh: SLOT must be a positive integer, got '$SLOT'" >&2; exit 2 ;; esac
[ "$SLOT" -le "${RAY_SLOT_STRIDE:-16}" ] || { echo "ray_slot.sh: SLOT $SLOT > RAY_SLOT_STRIDE (${RAY_SLOT_STRIDE:-16})" >&2; exit 2; }
PY=${PYTHON:-python3}
port=$((${RAY_SLOT_BASE_PORT:-6500} + 20 * SLOT))
dir=${RAY_SLOT_DIR:-/tmp/ray_slot}$SLOT
address=127.0.0.1:$port
gpus=()
[ -n "${RAY_SLOT_NUM_GPUS:-}" ] && gpus=(--num-gpus "$RAY_SLOT_NUM_GPUS")
mkdir -p "$dir"
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
"$PY" -m ray.scripts.scripts start --head --block --port "$port" --node-manager-port $((port + 1)) \
  --object-manager-port $((port + 2)) --ray-client-server-port $((port + 3)) --dashboard-agent-listen-port $((port + 4)) \
  --metrics-export-port $((port + 5)) --runtime-env-agent-port $((port + 6)) --dashboard-agent-grpc-port $((port + 7)) \
  --min-worker-port $((30000 + 1000 * SLOT)) --max-worker-port $((30000 + 1000 * SLOT + 999)) \
  --include-dashboard false --disable-usage-stats --temp-dir "$dir" "${gpus[@]}" > "$dir/head.log" 2>&1 &
head=$!
stop() { kill -TERM "$head" 2>/dev/null; wait "$head" 2>/dev/null; }
trap stop EXIT
# Connect and leave until the next job id is SLOT + 1 modulo RAY_SLOT_STRIDE (16): the GCS hands out ids in order, and
# counting alone is not enough (under load the head itself can take ids before ours), so each slot's jobs get ids
# of their own residue class, whatever else connected first.
fail() {
  echo "ray_slot.sh: $1; $dir/head.log:" >&2
  tail -n 20 "$dir/head.log" >&2
  exit 1
}
timeout "${RAY_SLOT_START_S:-90}" "$PY" -c '
import sys
import time

import ray

address, slot, stride = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
used = []
deadline = time.monotonic() + 80
while True:
    try:
        ray.init(address=address, logging_level="ERROR")
    except ConnectionError:  # the head is not listening yet
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
        continue
    job = ray.get_runtime_context().get_job_id()
    ray.shutdown()
    used.append(job)
    if (int.from_bytes(bytes.fromhex(job), "little") + 1) % stride == (slot + 1) % stride:
        break
print(" ".join(used))
' "$address" "$SLOT" "${RAY_SLOT_STRIDE:-16}" > "$dir/ids" &
burner=$!
while kill -0 "$burner" 2>/dev/null; do  # a head that dies at start (a port taken, a socket path too long) fails now
  kill -0 "$head" 2>/dev/null || { kill "$burner" 2>/dev/null; fail "slot $SLOT's head exited"; }
  sleep 0.5
done
wait "$burner" || fail "could not use slot $SLOT's head at $address"
ids=$(cat "$dir/ids")
echo "[ray_slot $SLOT] cluster at $address (temp dir $dir); job ids used up: $ids; the command's is the next"
RAY_ADDRESS=$address "$@"

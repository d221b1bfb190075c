#!/usr/bin/env bash
# Print the Python stacks of every Ray, vLLM and verl process on this machine (py-spy dump), to see where a
# stalled run waits, after the machine's memory, shared memory (Ray's object store) and GPU state. py-spy
# comes with the GPU stack (/tmp/site/bin) or from PATH.
#
#   bash scripts/gpu/dump_stacks.sh > stacks.txt
set -uo pipefail
PY_SPY=$(command -v py-spy || echo /tmp/site/bin/py-spy)
if [ ! -x "$PY_SPY" ]; then
  echo "py-spy not found (PATH or /tmp/site/bin); process list only"
  PY_SPY=
fi
echo "== memory, /dev/shm, /tmp =="
free -g
df -h /dev/shm /tmp
echo "== GPU =="
nvidia-smi 2>&1 | head -n 40
echo "== processes =="
ps -eo pid,pgid,etimes,pcpu,rss,args --sort=pid | grep -E 'ray::|main_ppo|vllm|VLLM|EngineCore|python' \
  | grep -v -E 'grep|dump_stacks' | cut -c 1-240
[ -n "$PY_SPY" ] || exit 0
for pid in $(pgrep -f -d ' ' 'ray::|main_ppo|VLLM|EngineCore|vllm'); do
  echo
  echo "== $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | cut -c 1-200) =="
  timeout 20 "$PY_SPY" dump --pid "$pid" 2>&1 | head -n 200
done

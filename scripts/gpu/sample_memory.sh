#!/usr/bin/env bash
# Sample the device's and the host's memory once a second into OUT_DIR until killed (or until PID, if given, ends):
#   gpu_memory.csv   nvidia-smi's timestamp, memory.used, memory.total (MiB), utilization.gpu (%)
#   host_memory.csv  epoch_s,used_mib,available_mib,total_mib,shmem_mib from /proc/meminfo (used = total - available;
#                    Shmem is /dev/shm and tmpfs: 100 of 113 GiB used when the 7B attempt ran out of RAM)
#   host_pressure.txt  the first time less than 15 % of RAM is available: the largest processes, /dev/shm and /tmp.
# scripts/summarize_grpo_run.py and scripts/plot_memory_timeline.py read them.
#
#   bash scripts/gpu/sample_memory.sh OUT_DIR [PID] &
set -uo pipefail
OUT=${1:?usage: sample_memory.sh OUT_DIR [PID]}
WATCH=${2:-}
mkdir -p "$OUT"
gpu=
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,memory.used,memory.total,utilization.gpu --format=csv,nounits -l 1 \
    > "$OUT/gpu_memory.csv" 2> /dev/null &
  gpu=$!
fi
trap '[ -n "$gpu" ] && kill "$gpu" 2> /dev/null' EXIT
trap 'exit 0' TERM INT
pressure=
while [ -z "$WATCH" ] || kill -0 "$WATCH" 2> /dev/null; do
  line=$(awk -v t="$(date +%s)" '/^MemTotal:/ {tot=$2} /^MemAvailable:/ {av=$2} /^Shmem:/ {sh=$2}
    END {printf "%d,%d,%d,%d,%d\n", t, (tot-av)/1024, av/1024, tot/1024, sh/1024}' /proc/meminfo)
  echo "$line" >> "$OUT/host_memory.csv"
  IFS=, read -r _ _ avail total _ <<< "$line"
  if [ -z "$pressure" ] && [ "$((avail * 100))" -lt "$((total * ${PRESSURE_PERCENT:-15}))" ]; then
    pressure=1
    { date; ps -eo pid,rss,args --sort=-rss | head -n 25 | cut -c 1-200; df -h /dev/shm /tmp
      du -sh /dev/shm/* /tmp/* 2> /dev/null | sort -h | tail -n 15; } > "$OUT/host_pressure.txt" 2>&1
  fi
  sleep 1
done

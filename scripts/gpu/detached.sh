#!/usr/bin/env bash
# Run a long GPU job across several device calls (each at most 10 minutes): the first call starts it detached
# from the call (its own session, so it outlives the call while the machine stays warm), later calls attach to
# it. Every call waits at most WAIT_S seconds, prints what the job logged meanwhile, and exits 0 while the job
# runs, with the job's exit status once it has ended, or with 3 if the job vanished without one (the machine
# was replaced, or the call's end killed it: start it again, resumable jobs pick up from their checkpoints).
#
#   bash scripts/gpu/detached.sh NAME WAIT_S command [args...]
#
# State in ${DETACHED_DIR:-/tmp/detached}/NAME: pid, log, rc (written when the job ends).
set -uo pipefail
NAME=${1:?usage: detached.sh NAME WAIT_S command [args...]}
WAIT_S=${2:?usage: detached.sh NAME WAIT_S command [args...]}
shift 2
DIR=${DETACHED_DIR:-/tmp/detached}/$NAME
mkdir -p "$DIR"
alive() { [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; }
say() { echo "[detached $NAME $(date +%H:%M:%S)] $*"; }

seen=0
[ -f "$DIR/log" ] && seen=$(wc -l < "$DIR/log")
if alive; then
  say "attaching to pid $(cat "$DIR/pid")"
elif [ -f "$DIR/rc" ]; then
  say "already ended with exit status $(cat "$DIR/rc")"
  tail -n 20 "$DIR/log"
  exit "$(cat "$DIR/rc")"
elif [ -f "$DIR/pid" ]; then
  say "pid $(cat "$DIR/pid") vanished without an exit status; last lines:"
  tail -n 20 "$DIR/log"
  rm -f "$DIR/pid"
  exit 3
else
  [ $# -gt 0 ] || { say "not running and no command given"; exit 2; }
  setsid bash -c '"$@"; echo $? > "$0/rc"' "$DIR" "$@" >> "$DIR/log" 2>&1 < /dev/null &
  echo $! > "$DIR/pid"
  say "started pid $! (log $DIR/log): $*"
fi

until_s=$(($(date +%s) + WAIT_S))
while alive && [ "$(date +%s)" -lt "$until_s" ]; do
  sleep 2
  lines=$(wc -l < "$DIR/log")
  [ "$lines" -gt "$seen" ] && sed -n "$((seen + 1)),${lines}p" "$DIR/log" | cut -c 1-300
  seen=$lines
done
if alive; then
  say "still running after ${WAIT_S}s"
  exit 0
fi
sed -n "$((seen + 1)),\$p" "$DIR/log" | cut -c 1-300
[ -f "$DIR/rc" ] || { say "ended without an exit status"; exit 3; }
say "ended with exit status $(cat "$DIR/rc")"
exit "$(cat "$DIR/rc")"

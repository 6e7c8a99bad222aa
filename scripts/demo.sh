#!/usr/bin/env bash
# crust demo: checkpoint a running python3 counter, restore it, and watch it
# go on counting from where it was.
#
#   cargo build --release && sudo ./scripts/demo.sh
#
# Environment: CRUST (default target/release/crust), IMG (default
# /tmp/crust-demo: the image folder), WORK (default /tmp/crust-demo-files:
# the counter's output, pidfiles and logs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CRUST="${CRUST:-$PWD/target/release/crust}"
IMG="${IMG:-/tmp/crust-demo}"
WORK="${WORK:-/tmp/crust-demo-files}"

if [ -t 1 ]; then B=$'\033[1m' N=$'\033[0m'; else B="" N=""; fi
step() { printf '\n%s== %s%s\n' "$B" "$*" "$N"; }
die() { echo "demo: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (crust needs CAP_SYS_ADMIN and CAP_SYS_PTRACE): sudo $0"
[ -x "$CRUST" ] || die "$CRUST not found: run 'cargo build --release' first"
command -v python3 >/dev/null || die "python3 not found (apt-get install -y python3)"

pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# Wait until no process (not even a zombie) has pid $1.
wait_gone() {
    for _ in $(seq 1 500); do
        [ -e "/proc/$1" ] || return 0
        sleep 0.01
    done
    die "pid $1 is still there"
}

rm -rf "$IMG" "$WORK"
mkdir -p "$IMG" "$WORK"

step "1. start a counter: python3 prints 0, 1, 2, ... once a second to $WORK/counter.txt"
# Its own session (setsid), stdio on plain files: nothing ties it to this
# shell, so the dump needs no --shell-job.
(
    # Close every fd but 0-2 that this shell inherited (a terminal's or
    # make's pipes would be refused by the dump).
    for fd in /proc/$BASHPID/fd/*; do
        n=${fd##*/}
        if [ "$n" -gt 2 ]; then eval "exec $n>&-" 2>/dev/null || true; fi
    done
    exec setsid python3 -c '
import os, sys, time
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
i = 0
while True:
    print(i, flush=True)
    i += 1
    time.sleep(1)
' "$WORK/counter.pid" </dev/null >"$WORK/counter.txt" 2>"$WORK/counter.err"
) &
child=$!
for _ in $(seq 1 500); do [ -s "$WORK/counter.pid" ] && break; sleep 0.01; done
pid=$(cat "$WORK/counter.pid")
echo "counter pid: $pid"
sleep 3.5
echo "counter.txt so far: $(tr '\n' ' ' <"$WORK/counter.txt")"

step "2. dump it: $CRUST dump -t $pid -D $IMG"
"$CRUST" dump -t "$pid" -D "$IMG" -v4 -o "$WORK/dump.log"
wait "$child" 2>/dev/null || true # the dump killed it: reap it
wait_gone "$pid"
last=$(tail -n 1 "$WORK/counter.txt")
echo "the counter is gone (it had reached $last); its pid $pid is free again"

step "3. the image files (CRIU 4.x format)"
ls -l "$IMG"
echo
echo "\$ crust show $IMG/pstree.img"
"$CRUST" show "$IMG/pstree.img"
if command -v crit >/dev/null; then
    echo
    echo "\$ crit show $IMG/pstree.img   (CRIU's own tool reads it too)"
    crit show "$IMG/pstree.img" || true
fi

step "4. restore it: $CRUST restore -D $IMG -d"
sleep 2 # nothing is counting now: the file does not grow
"$CRUST" restore -D "$IMG" -d --pidfile "$WORK/restored.pid" -v4 -o "$WORK/restore.log"
rpid=$(cat "$WORK/restored.pid")
echo "restored pid: $rpid (dumped pid: $pid)"
sleep 3.5

step "5. it counts on from $last"
echo "counter.txt now: $(tr '\n' ' ' <"$WORK/counter.txt")"
python3 - "$WORK/counter.txt" "$last" <<'PY'
import sys
nums = [int(l) for l in open(sys.argv[1]).read().split()]
last = int(sys.argv[2])
if nums != list(range(len(nums))):
    sys.exit(f"demo: FAIL: the counter skipped or repeated: {nums}")
if nums[-1] <= last:
    sys.exit(f"demo: FAIL: the restored counter did not go on past {last}")
print(f"OK: 0..{last} before the dump, {last + 1}..{nums[-1]} after the restore, no gap")
PY

step "6. stop it"
kill -TERM "$rpid"
# It is no child of ours: whoever reaps orphans here reaps it; dead is enough.
for _ in $(seq 1 500); do
    state=$(awk '{print $3}' "/proc/$rpid/stat" 2>/dev/null || true)
    [ -z "$state" ] || [ "$state" = Z ] && break
    sleep 0.01
done
pid=""
echo "done. images: $IMG, logs: $WORK/dump.log, $WORK/restore.log"

#!/usr/bin/env bash
# Make sure a Docker engine answers on DOCKER_SOCK (default /var/run/docker.sock).
# Idempotent: does nothing when an engine already answers. On Debian as root it
# installs docker.io and busybox-static when missing and starts dockerd with no
# bridge network (containers get loopback only), which keeps tests hermetic.
set -euo pipefail

SOCK="${DOCKER_SOCK:-/var/run/docker.sock}"
DATA_ROOT="${DOCKER_DATA_ROOT:-/var/lib/docker}"
LOG="${DOCKER_LOG:-/var/log/container-jobs-dockerd.log}"

answers() { curl -fsS --max-time 3 --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1; }

if answers; then
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "No Docker engine answers on $SOCK and we are not root: start one, or set DOCKER_SOCK." >&2
    exit 1
fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "Cannot install ${need[*]}: no apt-get here. Install a Docker engine yourself." >&2
        exit 1
    fi
    echo "Installing ${need[*]} ..." >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# How long to wait for a starting engine. An engine restarted on an old data root may spend
# minutes cleaning up before it answers (one stale network sandbox per container an engine
# with --bridge=none ever ran without an explicit network: moby/moby#46583).
WAIT="${DOCKER_START_TIMEOUT:-600}"

echo "Starting dockerd on $SOCK (log: $LOG) ..." >&2
mkdir -p "$(dirname "$LOG")"
log_start=$(stat -c %s "$LOG" 2>/dev/null || echo 0)
setsid nohup dockerd \
    --host "unix://$SOCK" \
    --data-root "$DATA_ROOT" \
    --bridge=none --iptables=false \
    >>"$LOG" 2>&1 < /dev/null &
pid=$!

started=$SECONDS
while [ $((SECONDS - started)) -lt "$WAIT" ]; do
    if answers; then
        echo "Docker engine is up ($((SECONDS - started)) s)." >&2
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "dockerd exited before it answered on $SOCK; its log:" >&2
        tail -c +"$((log_start + 1))" "$LOG" | tail -20 >&2 || true
        exit 1
    fi
    elapsed=$((SECONDS - started))
    if [ "$elapsed" -gt 0 ] && [ $((elapsed % 15)) -eq 0 ]; then
        stale=$(tail -c +"$((log_start + 1))" "$LOG" | grep -c "Removing stale sandbox" || true)
        echo "still waiting for dockerd after ${elapsed} s (stale sandboxes removed so far: $stale)" >&2
        sleep 1
    fi
    sleep 0.5
done
echo "dockerd did not answer on $SOCK within ${WAIT} s; see $LOG" >&2
tail -20 "$LOG" >&2 || true
exit 1

#!/usr/bin/env bash
# Make sure a private registry with htpasswd auth answers on 127.0.0.1:REGISTRY_PORT, for the
# private-image tests, and print its URL. Idempotent: does nothing but print the URL when a
# registry already answers there (one this script started before, or anyone's: it is never
# stopped, reconfigured or restarted here). Otherwise, as root on Debian, it installs
# docker-registry (distribution 2.8) and apache2-utils (htpasswd, for the bcrypt password file)
# when missing, writes a config and the password file under REGISTRY_STATE_DIR, and starts the
# registry in the background. The engine treats loopback registries as insecure-allowed, so no
# TLS is needed.
#
#   REGISTRY_PORT       default 5555 (the registry listens on 127.0.0.1 only)
#   REGISTRY_STATE_DIR  where each port's registry keeps config, password file, storage, log
#                       and pid file, in a folder named after the port
#                       (default /var/lib/container-jobs-registry as root, else under /tmp)
#
# The one user, for this local test registry only: cmtest / cm-test-registry-secret
# (tests/registry.py uses the same pair).
set -euo pipefail

PORT="${REGISTRY_PORT:-5555}"
ADDR="127.0.0.1:$PORT"
if [ "$(id -u)" = 0 ]; then
    STATE_ROOT="${REGISTRY_STATE_DIR:-/var/lib/container-jobs-registry}"
else
    STATE_ROOT="${REGISTRY_STATE_DIR:-${TMPDIR:-/tmp}/container-jobs-registry-$(id -u)}"
fi
STATE="$STATE_ROOT/$PORT"
USER_NAME=cmtest
USER_PASSWORD=cm-test-registry-secret
WAIT="${REGISTRY_START_TIMEOUT:-30}"

# The registry's API version header on /v2/ (401 without credentials): a registry answers.
answers() {
    curl -sS --max-time 3 -o /dev/null -D - "http://$ADDR/v2/" 2>/dev/null \
        | grep -qi '^docker-distribution-api-version: *registry/2'
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if answers; then
    echo "http://$ADDR"
    exit 0
fi
if listening; then
    echo "Something that is not a registry listens on $ADDR: set REGISTRY_PORT to a free port." >&2
    exit 1
fi

need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "Cannot install ${need[*]}: not root, or no apt-get. Install them yourself." >&2
        exit 1
    fi
    echo "Installing ${need[*]} ..." >&2
    # The package's own service (the default config, on :5000) must not start: while
    # installing, a policy-rc.d refuses service starts, unless the system already has one.
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    if [ -n "$made_policy" ]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
fi

mkdir -p "$STATE/data"
chmod 700 "$STATE"
# The bcrypt password file: rewritten only when the test user's password does not verify.
if ! htpasswd -vb "$STATE/htpasswd" "$USER_NAME" "$USER_PASSWORD" >/dev/null 2>&1; then
    htpasswd -Bbc "$STATE/htpasswd" "$USER_NAME" "$USER_PASSWORD" >/dev/null 2>&1
fi
cat >"$STATE/config.yml" <<EOF
# Written by scripts/ensure-registry.sh: a local test registry, loopback only.
version: 0.1
log:
  level: info
  fields:
    service: container-jobs-test-registry
storage:
  filesystem:
    rootdirectory: $STATE/data
  delete:
    enabled: true
http:
  addr: $ADDR
  secret: container-jobs-test-registry
auth:
  htpasswd:
    realm: container-jobs-test-registry
    path: $STATE/htpasswd
EOF

LOG="$STATE/registry.log"
echo "Starting docker-registry on $ADDR (state: $STATE, log: $LOG) ..." >&2
log_start=$(stat -c %s "$LOG" 2>/dev/null || echo 0)
# The registry reads REGISTRY_* variables as overrides of its config: none of the caller's.
unset_registry_vars=()
for var in $(compgen -e); do
    case "$var" in REGISTRY_*) unset_registry_vars+=(-u "$var") ;; esac
done
setsid nohup env "${unset_registry_vars[@]}" docker-registry serve "$STATE/config.yml" >>"$LOG" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$STATE/registry.pid"

started=$SECONDS
while [ $((SECONDS - started)) -lt "$WAIT" ]; do
    if answers; then
        echo "Registry is up ($((SECONDS - started)) s)." >&2
        echo "http://$ADDR"
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "docker-registry exited before it answered on $ADDR; its log:" >&2
        tail -c +"$((log_start + 1))" "$LOG" | tail -20 >&2 || true
        exit 1
    fi
    sleep 0.2
done
echo "docker-registry did not answer on $ADDR within ${WAIT} s; see $LOG" >&2
exit 1

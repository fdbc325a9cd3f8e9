#!/usr/bin/env bash
# Make sure a one-node Kubernetes v1.20.2 cluster answers on 127.0.0.1, for the Kubernetes
# executor's tests, and print its kubeconfig path. Idempotent: when the cluster this script
# started answers (/readyz, and its node is Ready), it only prints the path.
#
# Real components, built offline from Debian's source package, no downloads but Debian's:
#   - kube-apiserver, kube-controller-manager, kube-scheduler, kubelet: Debian bookworm's
#     `kubernetes` source package (1.20.5+really1.20.2; a deb-src line is added for it),
#     built with golang-1.19-go (GO111MODULE=off, GOPROXY=off, the vendored modules), the
#     version stamped through -ldflags (else /version says v0.0.0-master). About 4 minutes on
#     2 cores, once: the binaries are cached in KUBE_CACHE (outside the repository), the Go
#     build cache too, so later runs take seconds.
#   - PATCHED: this sandbox refuses a negative oom_score_adj (runc then fails with "can't get
#     final child's PID from pipe"), so the build sets two constants to 0:
#     defaultSandboxOOMAdj (pkg/kubelet/dockershim/docker_sandbox.go, -998 upstream) and
#     guaranteedOOMScoreAdj (pkg/kubelet/qos/policy.go, -997 upstream).
#   - PATCHED: the tree vendors github.com/modern-go/reflect2 v1.0.1, which crashes binaries
#     built with Go 1.18+ (kube-apiserver dies with "fatal error: fault" in mapiterinit as soon
#     as it encodes a map: modern-go/reflect2#23); the build vendors Debian's
#     golang-github-modern-go-reflect2-dev (1.0.2, the fix) in its place.
#   - PATCHED: the test rig has no pod network (the engine runs with --bridge=none and there
#     is no CNI plugin), so a pod's sandbox has no IP; the kubelet's podSandboxChanged
#     (pkg/kubelet/kuberuntime/kuberuntime_manager.go) then decides at the pod's next sync
#     that the sandbox must be made again and kills the pod (a job that runs a few seconds
#     ended 137, "Error", restartPolicy Never). The build turns that one check off. Nothing
#     else changes.
#   - etcd 3.4 from Debian's etcd-server package.
#   - the kubelet runs pods on the Docker engine at DOCKER_SOCK (dockershim), with a pause
#     image built here from the tree's build/pause/linux/pause.c (static, FROM scratch).
#   - certificates from openssl: a CA, the apiserver's (127.0.0.1), an admin client in
#     system:masters, the kubelet's client, a service-account key pair.
#   - the kubelet's root directory is a shared bind mount of itself, so that the engine sees
#     the volumes (service-account tokens) the kubelet mounts there.
# Everything listens on 127.0.0.1; the service range is configured, never used.
#
#   ensure-kubernetes.sh          build if needed, start if needed, print the kubeconfig path
#   ensure-kubernetes.sh --stop   stop what it started and undo its side effects: the
#                                 processes, the pods' containers (label
#                                 io.kubernetes.pod.namespace), the bind mount, the kubelet's
#                                 and etcd's directories. The cached binaries, the pause
#                                 image, the installed Debian packages and the deb-src line
#                                 stay (they are what makes the next start take seconds).
#
#   KUBE_CACHE      binaries, build tree, Go cache (default /var/cache/container-jobs/kubernetes)
#   KUBE_STATE      certificates, etcd data, kubelet root, logs, pids
#                   (default /var/lib/container-jobs-kubernetes)
#   KUBE_PORT       the apiserver's secure port (default 6443)
#   DOCKER_SOCK     the engine the kubelet runs pods on (default /var/run/docker.sock)
set -euo pipefail

VERSION=v1.20.2
DEB_VERSION="1.20.5+really1.20.2"
CACHE_ROOT="${KUBE_CACHE:-/var/cache/container-jobs/kubernetes}"
CACHE="$CACHE_ROOT/$VERSION"
BIN="$CACHE/bin"
STATE="${KUBE_STATE:-/var/lib/container-jobs-kubernetes}"
PORT="${KUBE_PORT:-6443}"
ETCD_PORT="${KUBE_ETCD_PORT:-2479}"
ETCD_PEER_PORT="${KUBE_ETCD_PEER_PORT:-2480}"
KUBELET_PORT="${KUBE_KUBELET_PORT:-10250}"
DOCKER_SOCK="${DOCKER_SOCK:-/var/run/docker.sock}"
# The node's name is "localhost": the kubelet refuses a loopback --node-ip ("nodeIP can't be
# loopback address", and then reports no address at all), so the apiserver reaches it by its
# Hostname address (--kubelet-preferred-address-types Hostname), which resolves to 127.0.0.1.
NODE=localhost
PAUSE_IMAGE=container-jobs/pause:3.4
KUBECONFIG_OUT="$STATE/admin.kubeconfig"
WAIT="${KUBE_START_TIMEOUT:-120}"
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
# Bumped whenever the patches (TREE_RECIPE) or the build (RECIPE) change: trees and
# binaries made otherwise are made again.
TREE_RECIPE=3
RECIPE=4
REFLECT2=/usr/share/gocode/src/github.com/modern-go/reflect2
GO=/usr/lib/go-1.19/bin/go

say() { echo "ensure-kubernetes: $*" >&2; }
die() { say "FAIL: $*"; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "needs root (builds, mounts, runs a kubelet): skipped"
}

# ---- build: the four binaries, once ---------------------------------------------------

have_binaries() {
    local c
    [ "$(cat "$BIN/.recipe" 2>/dev/null)" = "$RECIPE" ] || return 1
    for c in "${COMPONENTS[@]}"; do [ -x "$BIN/$c" ] || return 1; done
}

apt_install() {
    local need=() pkg
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
    [ ${#need[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "no apt-get: install ${need[*]} yourself"
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

ensure_deb_src() {
    if grep -rqsE '^(deb-src .* bookworm |Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return 0
    fi
    say "adding a deb-src line for bookworm (/etc/apt/sources.list.d/container-jobs-src.sources)"
    cat >/etc/apt/sources.list.d/container-jobs-src.sources <<'EOF'
# Added by django-container-jobs scripts/ensure-kubernetes.sh: Debian source packages (kubernetes).
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt-get update -qq
}

fetch_source() {
    local tree="$CACHE/build/kubernetes-$DEB_VERSION"
    if [ "$(cat "$tree/.cm-patched" 2>/dev/null)" = "$TREE_RECIPE" ]; then
        echo "$tree"
        return 0
    fi
    ensure_deb_src
    mkdir -p "$CACHE/build"
    rm -rf "$tree"
    if ! ls "$CACHE/build"/kubernetes_"$DEB_VERSION"-*.dsc >/dev/null 2>&1; then
        say "fetching Debian's kubernetes source package ($DEB_VERSION)"
        (cd "$CACHE/build" && apt-get source --download-only kubernetes >/dev/null 2>&1) \
            || die "apt-get source kubernetes failed (a deb-src line for bookworm?)"
    fi
    (cd "$CACHE/build" && dpkg-source --no-check -x kubernetes_*.dsc "kubernetes-$DEB_VERSION" >/dev/null)
    # The one local change (see the header): no negative oom_score_adj in this sandbox.
    sed -i 's/^\(\s*defaultSandboxOOMAdj int = \)-998$/\10/' "$tree/pkg/kubelet/dockershim/docker_sandbox.go"
    sed -i 's/^\(\s*guaranteedOOMScoreAdj int = \)-997$/\10/' "$tree/pkg/kubelet/qos/policy.go"
    grep -q 'defaultSandboxOOMAdj int = 0$' "$tree/pkg/kubelet/dockershim/docker_sandbox.go" \
        || die "patching defaultSandboxOOMAdj failed"
    grep -q 'guaranteedOOMScoreAdj int = 0$' "$tree/pkg/kubelet/qos/policy.go" \
        || die "patching guaranteedOOMScoreAdj failed"
    local sandbox_ip='if !kubecontainer.IsHostNetworkPod(pod) \&\& sandboxStatus.Network.Ip == "" {'
    sed -i "s/^\(\s*\)$sandbox_ip\$/\1if false \&\& !kubecontainer.IsHostNetworkPod(pod) \&\& sandboxStatus.Network.Ip == \"\" { \/\/ container-jobs: no pod network here/" \
        "$tree/pkg/kubelet/kuberuntime/kuberuntime_manager.go"
    grep -q 'if false && !kubecontainer.IsHostNetworkPod(pod) && sandboxStatus.Network.Ip == ""' \
        "$tree/pkg/kubelet/kuberuntime/kuberuntime_manager.go" || die "patching podSandboxChanged failed"
    # reflect2 1.0.2 from Debian in place of the vendored 1.0.1 (see the header).
    [ -f "$REFLECT2/reflect2.go" ] || die "no $REFLECT2 (golang-github-modern-go-reflect2-dev)"
    rm -rf "$tree/vendor/github.com/modern-go/reflect2"
    cp -r "$REFLECT2" "$tree/vendor/github.com/modern-go/reflect2"
    echo "$TREE_RECIPE" >"$tree/.cm-patched"
    echo "$tree"
}

build() {
    apt_install golang-1.19-go dpkg-dev gcc libc6-dev golang-github-modern-go-reflect2-dev
    local tree gopath pkg ldflags="-s -w"
    tree=$(fetch_source)
    gopath="$CACHE/build/gopath"
    mkdir -p "$gopath/src/k8s.io" "$BIN"
    ln -sfn "$tree" "$gopath/src/k8s.io/kubernetes"
    # Both version packages, as hack/lib/version.sh stamps them: the apiserver's /version
    # reads client-go's, --version component-base's.
    for pkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version \
        k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
        ldflags="$ldflags -X $pkg.gitVersion=$VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
        ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=2021-01-13T13:20:00Z"
    done
    say "building ${COMPONENTS[*]} $VERSION (about 4 minutes on 2 cores; once, cached in $BIN)"
    local started=$SECONDS
    (
        cd "$gopath/src/k8s.io/kubernetes"
        export GOPATH="$gopath" GO111MODULE=off GOPROXY=off GOFLAGS= CGO_ENABLED=0
        export GOCACHE="$CACHE_ROOT/go-build" PATH="/usr/lib/go-1.19/bin:$PATH" HOME="$CACHE/build"
        make gen_openapi >"$CACHE/build/gen_openapi.log" 2>&1 \
            || { tail -20 "$CACHE/build/gen_openapi.log" >&2; exit 1; }
        for c in "${COMPONENTS[@]}"; do
            "$GO" build -o "$BIN/$c.tmp" -ldflags "$ldflags" "./cmd/$c"
            mv "$BIN/$c.tmp" "$BIN/$c"
            say "built $c ($((SECONDS - started)) s)"
        done
        echo "$RECIPE" >"$BIN/.recipe"
    ) || die "the build failed"
}

# ---- the pause image ----------------------------------------------------------------

docker_api() {  # METHOD PATH [curl args...]
    local method=$1 path=$2
    shift 2
    curl -sS --max-time 60 --unix-socket "$DOCKER_SOCK" -X "$method" "$@" "http://localhost/v1.41$path"
}

ensure_pause_image() {
    if [ "$(docker_api GET "/images/$PAUSE_IMAGE/json" -o /dev/null -w '%{http_code}')" = 200 ]; then
        return 0
    fi
    local tree ctx
    tree=$(fetch_source)
    ctx=$(mktemp -d)
    gcc -Os -static -DVERSION=3.4 -o "$ctx/pause" "$tree/build/pause/linux/pause.c"
    strip "$ctx/pause"
    printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$ctx/Dockerfile"
    tar -C "$ctx" -cf "$ctx/ctx.tar" Dockerfile pause
    say "building the pause image $PAUSE_IMAGE (FROM scratch, static pause.c)"
    docker_api POST "/build?t=$PAUSE_IMAGE&rm=1" -H 'Content-Type: application/x-tar' \
        --data-binary "@$ctx/ctx.tar" >"$ctx/build.log"
    rm -rf "$ctx"
    [ "$(docker_api GET "/images/$PAUSE_IMAGE/json" -o /dev/null -w '%{http_code}')" = 200 ] \
        || die "building the pause image failed"
}

# ---- certificates and kubeconfigs ------------------------------------------------------

cert() {  # NAME SUBJECT [EXT-FILE-CONTENT]
    local name=$1 subject=$2 ext=${3:-}
    [ -f "$STATE/pki/$name.crt" ] && return 0
    openssl genrsa -out "$STATE/pki/$name.key" 2048 2>/dev/null
    openssl req -new -key "$STATE/pki/$name.key" -subj "$subject" -out "$STATE/pki/$name.csr" 2>/dev/null
    if [ -n "$ext" ]; then
        printf '%s\n' "$ext" >"$STATE/pki/$name.ext"
        openssl x509 -req -in "$STATE/pki/$name.csr" -CA "$STATE/pki/ca.crt" -CAkey "$STATE/pki/ca.key" \
            -CAcreateserial -days 3650 -extfile "$STATE/pki/$name.ext" -out "$STATE/pki/$name.crt" 2>/dev/null
    else
        openssl x509 -req -in "$STATE/pki/$name.csr" -CA "$STATE/pki/ca.crt" -CAkey "$STATE/pki/ca.key" \
            -CAcreateserial -days 3650 -out "$STATE/pki/$name.crt" 2>/dev/null
    fi
}

kubeconfig() {  # FILE USER CERT-NAME
    local file=$1 user=$2 name=$3
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: container-jobs
  cluster:
    server: https://127.0.0.1:$PORT
    certificate-authority: $STATE/pki/ca.crt
users:
- name: $user
  user:
    client-certificate: $STATE/pki/$name.crt
    client-key: $STATE/pki/$name.key
contexts:
- name: container-jobs
  context:
    cluster: container-jobs
    user: $user
    namespace: default
current-context: container-jobs
EOF
    chmod 600 "$file"
}

ensure_ca() {
    [ -f "$STATE/pki/ca.key" ] || openssl genrsa -out "$STATE/pki/ca.key" 2048 2>/dev/null
    # The CA names what its key may do (keyUsage): Python 3.13's default verification
    # (VERIFY_X509_STRICT) refuses a CA without it. A CA made earlier without it is issued
    # again from the same key and name, so the certificates it signed stay valid.
    if ! openssl x509 -in "$STATE/pki/ca.crt" -noout -ext keyUsage 2>/dev/null \
            | grep -q "Certificate Sign"; then
        openssl req -x509 -new -key "$STATE/pki/ca.key" -subj "/CN=container-jobs-test-ca" \
            -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
            -days 3650 -out "$STATE/pki/ca.crt.new" 2>/dev/null
        mv "$STATE/pki/ca.crt.new" "$STATE/pki/ca.crt"
    fi
}

ensure_pki() {
    mkdir -p "$STATE/pki"
    chmod 700 "$STATE" "$STATE/pki"
    ensure_ca
    cert apiserver "/CN=kube-apiserver" \
        "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default"
    cert admin "/O=system:masters/CN=container-jobs-admin"
    cert "kubelet-$NODE" "/O=system:nodes/CN=system:node:$NODE"
    cert "kubelet-serving-$NODE" "/CN=$NODE" "subjectAltName=IP:127.0.0.1,DNS:$NODE"
    cert controller-manager "/CN=system:kube-controller-manager"
    cert scheduler "/CN=system:kube-scheduler"
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
    [ -f "$STATE/pki/sa.key" ] || openssl genrsa -out "$STATE/pki/sa.key" 2048 2>/dev/null
    [ -f "$STATE/pki/sa.pub" ] || openssl rsa -in "$STATE/pki/sa.key" -pubout -out "$STATE/pki/sa.pub" 2>/dev/null
    kubeconfig "$KUBECONFIG_OUT" container-jobs-admin admin
    kubeconfig "$STATE/kubelet.kubeconfig" "system:node:$NODE" "kubelet-$NODE"
    kubeconfig "$STATE/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
    kubeconfig "$STATE/scheduler.kubeconfig" system:kube-scheduler scheduler
}

# ---- processes -----------------------------------------------------------------------

api() {  # PATH: GET with the admin certificate
    curl -sS --max-time 5 --cacert "$STATE/pki/ca.crt" --cert "$STATE/pki/admin.crt" \
        --key "$STATE/pki/admin.key" "https://127.0.0.1:$PORT$1" 2>/dev/null
}

ready() { [ "$(api /readyz)" = ok ]; }

node_ready() {
    api "/api/v1/nodes/$NODE" | tr -d ' \n' | grep -q '"type":"Ready","status":"True"'
}

start() {  # NAME COMMAND...: in the background, logged, its pid kept
    local name=$1
    shift
    if [ -f "$STATE/$name.pid" ] && kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null; then
        return 0
    fi
    setsid nohup "$@" >>"$STATE/log/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
}

wait_for() {  # WHAT CHECK-FUNCTION
    local what=$1 check=$2 started=$SECONDS
    while [ $((SECONDS - started)) -lt "$WAIT" ]; do
        "$check" && return 0
        sleep 0.5
    done
    die "$what not ready within ${WAIT}s; logs in $STATE/log"
}

ensure_kubelet_root() {
    mkdir -p "$STATE/kubelet"
    if ! findmnt -n "$STATE/kubelet" >/dev/null 2>&1; then
        mount --bind "$STATE/kubelet" "$STATE/kubelet"
    fi
    mount --make-rshared "$STATE/kubelet"
}

start_cluster() {
    mkdir -p "$STATE/log" "$STATE/etcd"
    chmod 700 "$STATE/etcd"
    start etcd /usr/bin/etcd --name cm-etcd --data-dir "$STATE/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "cm-etcd=http://127.0.0.1:$ETCD_PEER_PORT" \
        --listen-metrics-urls "" --quota-backend-bytes 1073741824
    start kube-apiserver "$BIN/kube-apiserver" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
        --secure-port "$PORT" --insecure-port 0 \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --client-ca-file "$STATE/pki/ca.crt" \
        --tls-cert-file "$STATE/pki/apiserver.crt" --tls-private-key-file "$STATE/pki/apiserver.key" \
        --kubelet-client-certificate "$STATE/pki/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$STATE/pki/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority "$STATE/pki/ca.crt" \
        --kubelet-preferred-address-types Hostname \
        --service-account-key-file "$STATE/pki/sa.pub" \
        --service-account-signing-key-file "$STATE/pki/sa.key" \
        --service-account-issuer https://kubernetes.default.svc \
        --service-cluster-ip-range 10.96.0.0/16 \
        --authorization-mode Node,RBAC \
        --enable-admission-plugins NodeRestriction,ServiceAccount,ResourceQuota,LimitRanger \
        --allow-privileged=true --profiling=false
    wait_for "kube-apiserver" ready
    start kube-controller-manager "$BIN/kube-controller-manager" --bind-address 127.0.0.1 \
        --port 0 --secure-port 10257 \
        --kubeconfig "$STATE/controller-manager.kubeconfig" \
        --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
        --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
        --service-account-private-key-file "$STATE/pki/sa.key" --root-ca-file "$STATE/pki/ca.crt" \
        --use-service-account-credentials --controllers '*,-nodeipam,-service,-route,-cloud-node-lifecycle' \
        --leader-elect=false --profiling=false
    start kube-scheduler "$BIN/kube-scheduler" --bind-address 127.0.0.1 --port 0 --secure-port 10259 \
        --kubeconfig "$STATE/scheduler.kubeconfig" \
        --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
        --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
        --leader-elect=false --profiling=false
    ensure_kubelet_root
    cat >"$STATE/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $STATE/pki/kubelet-serving-$NODE.crt
tlsPrivateKeyFile: $STATE/pki/kubelet-serving-$NODE.key
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
hairpinMode: none
makeIPTablesUtilChains: false
clusterDomain: cluster.local
serializeImagePulls: false
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
    start kubelet "$BIN/kubelet" --config "$STATE/kubelet-config.yaml" \
        --kubeconfig "$STATE/kubelet.kubeconfig" --root-dir "$STATE/kubelet" \
        --container-runtime docker --docker-endpoint "unix://$DOCKER_SOCK" \
        --pod-infra-container-image "$PAUSE_IMAGE" --hostname-override "$NODE" \
        --cert-dir "$STATE/pki/kubelet-certs"
    wait_for "the node $NODE" node_ready
}

# ---- stop: undo what this script did ----------------------------------------------------

stop_cluster() {
    local name pid
    for name in kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
        [ -f "$STATE/$name.pid" ] || continue
        pid=$(cat "$STATE/$name.pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$STATE/$name.pid"
        say "stopped $name"
    done
    # The pods' containers (the kubelet's, by its label), on the engine the kubelet used.
    if [ -S "$DOCKER_SOCK" ]; then
        local ids
        ids=$(docker_api GET '/containers/json?all=1&filters=%7B%22label%22%3A%5B%22io.kubernetes.pod.namespace%22%5D%7D' \
            | grep -o '"Id":"[0-9a-f]*"' | cut -d'"' -f4 || true)
        for id in $ids; do docker_api DELETE "/containers/$id?force=1&v=1" >/dev/null || true; done
        [ -n "$ids" ] && say "removed $(wc -w <<<"$ids") pod containers"
    fi
    if [ -d "$STATE/kubelet" ]; then
        # Volumes the kubelet mounted under its root, then the root's own bind mount.
        findmnt -rn -o TARGET | grep "^$STATE/kubelet/" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
        while findmnt -n "$STATE/kubelet" >/dev/null 2>&1; do umount -l "$STATE/kubelet"; done
        rm -rf "$STATE/kubelet"
    fi
    rm -rf "$STATE/etcd" "$STATE/kubelet-config.yaml"
    say "stopped; certificates and logs stay in $STATE, binaries in $BIN"
}

# ---- main ------------------------------------------------------------------------------

case "${1:-}" in
    --stop)
        need_root
        stop_cluster
        exit 0
        ;;
    --build)
        need_root
        have_binaries || build
        exit 0
        ;;
    "") ;;
    *) die "usage: $0 [--stop|--build]" ;;
esac

if [ -f "$STATE/pki/admin.crt" ] && ready && node_ready; then
    ensure_ca  # a running cluster's CA made without keyUsage: issued again, nothing restarts
    echo "$KUBECONFIG_OUT"
    exit 0
fi
need_root
[ -S "$DOCKER_SOCK" ] || die "no Docker engine at $DOCKER_SOCK (the kubelet runs pods there)"
started=$SECONDS
have_binaries || build
apt_install etcd-server
ensure_pause_image
ensure_pki
start_cluster
say "cluster up ($((SECONDS - started)) s): kubectl --kubeconfig $KUBECONFIG_OUT"
echo "$KUBECONFIG_OUT"

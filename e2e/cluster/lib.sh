# Shared settings of the e2e cluster scripts (sourced by up, down and status).
# Every value can be overridden from the environment; all listeners are on 127.0.0.1.
# shellcheck shell=bash

E2E_CLUSTER_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$E2E_CLUSTER_HERE/versions.env"

CACHE="${CONTEXTLM_CACHE:-$HOME/.cache/contextlm}"
BIN="$CACHE/bin"
CUR="$BIN/current"
STATE="${CONTEXTLM_CLUSTER_DIR:-$CACHE/cluster}"
PKI="$STATE/pki"
PIDS="$STATE/pids"
LOGDIR="$STATE/logs"
ENV_FILE="$STATE/cluster.env"
ADMIN_KUBECONFIG="$STATE/admin.kubeconfig"
PYTHON="${PYTHON:-python3}"

# CONTEXTLM_E2E_PORT_OFFSET shifts every default port, so a second cluster (with its own
# CONTEXTLM_CLUSTER_DIR) can run beside the first one.
O="${CONTEXTLM_E2E_PORT_OFFSET:-0}"
ETCD_PORT="${CONTEXTLM_ETCD_PORT:-$((23790 + O))}"
ETCD_PEER_PORT="${CONTEXTLM_ETCD_PEER_PORT:-$((23800 + O))}"
APISERVER_PORT="${CONTEXTLM_APISERVER_PORT:-$((26443 + O))}"
KCM_PORT="${CONTEXTLM_KCM_PORT:-$((20257 + O))}"
SCHEDULER_PORT="${CONTEXTLM_SCHEDULER_PORT:-$((20259 + O))}"
KWOK_PORT="${CONTEXTLM_KWOK_PORT:-$((20247 + O))}"
KUBELET_PORT="${CONTEXTLM_KUBELET_PORT:-$((20250 + O))}"
S3_PORT="${CONTEXTLM_S3_PORT:-$((29000 + O))}"
S3_CONSOLE_PORT="${CONTEXTLM_S3_CONSOLE_PORT:-$((29001 + O))}"
PG_PORT="${CONTEXTLM_PG_PORT:-$((25432 + O))}"

S3_ACCESS_KEY="${CONTEXTLM_S3_ACCESS_KEY:-contextlm}"
S3_SECRET_KEY="${CONTEXTLM_S3_SECRET_KEY:-contextlm-e2e-secret}"
S3_REGION="${CONTEXTLM_S3_REGION:-us-east-1}"
PG_USER=contextlm
PG_PASSWORD="${CONTEXTLM_PG_PASSWORD:-contextlm-e2e}"
PG_DB=contextlm

EXECUTOR_NODE="${CONTEXTLM_EXECUTOR_NODE:-contextlm-executor}"
SERVICE_CIDR=10.0.0.0/24

# PostgreSQL refuses to run as root, and root's home is not readable by the postgres
# user, so when run as root its data directory lives outside $HOME.
if [ "$(id -u)" -eq 0 ]; then
  PG_DATA="${CONTEXTLM_PG_DATA:-/var/tmp/contextlm-e2e-pg-$PG_PORT}"
else
  PG_DATA="${CONTEXTLM_PG_DATA:-$STATE/postgres}"
fi

log() { printf '%s cluster: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# pid_alive NAME: the process recorded in $PIDS/NAME.pid is running and still the same
# program (its cmdline names the expected binary), so a recycled pid is never killed.
pid_alive() {
  local name="$1" pid
  [ -f "$PIDS/$name.pid" ] || return 1
  pid="$(cat "$PIDS/$name.pid")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$(cat "$PIDS/$name.match" 2>/dev/null || echo "$name")"
}

pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }

# ---------------------------------------------------------------- PATH links
# $CACHE/bin/current/ holds one link per tool at the pinned versions, so scripts and
# tests need one PATH entry and no version arithmetic.
link_current() {
  local cur="$BIN/current" f name keep=" "
  mkdir -p "$cur"
  # Each link is replaced by an atomic rename, so a concurrent `up` never sees a tool
  # missing; links to versions no longer pinned are removed afterwards.
  _link() {
    local tmp="$cur/.$2.$$"
    ln -sfn "$1" "$tmp" && mv -Tf "$tmp" "$cur/$2"
    keep+="$2 "
  }
  for f in "$BIN/kubectl-layer-$KUBECTL_LAYER_VERSION/kubectl" "$BIN/kubectl-layer-$KUBECTL_LAYER_VERSION/helm" \
           "$BIN/etcd-$ETCD_VERSION/etcd" "$BIN/kwok-$KWOK_VERSION/kwok" \
           "$BIN/kube-apiserver-$K8S_VERSION/kube-apiserver" \
           "$BIN/kube-controller-manager-$K8S_VERSION/kube-controller-manager" \
           "$BIN/kube-scheduler-$K8S_VERSION/kube-scheduler" \
           "$BIN/minio-$MINIO_VERSION/minio" "$BIN/seaweedfs-$SEAWEEDFS_VERSION/weed"; do
    if [ -x "$f" ]; then _link "$f" "$(basename "$f")"; fi
  done
  if [ -d "$BIN/kwok-$KWOK_VERSION/stages" ]; then _link "$BIN/kwok-$KWOK_VERSION/stages" kwok-stages; fi
  local pgb; pgb="$(pg_bindir)"
  if [ -n "$pgb" ]; then _link "$pgb" postgresql-bin; fi
  for f in "$cur"/*; do
    name="$(basename "$f")"
    if [ -L "$f" ] && [[ "$keep" != *" $name "* ]]; then rm -f "$f"; fi
  done
  return 0
}

# Processes in start order; down stops them in reverse.
COMPONENTS=(postgres s3 etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubelet)

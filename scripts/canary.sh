#!/usr/bin/env bash
# scripts/canary.sh — roll a new tollgate version out through the chart's canary, gated on Prometheus.
#
#   scripts/canary.sh --tag 1.3.0 --prometheus-url http://prometheus.monitoring:9090 [options]
#
# For each step (default 10 50 100):
#   helm upgrade RELEASE CHART --reuse-values --set canary.enabled=true
#     [--set-string canary.image.tag=TAG] --set canary.weight=N --wait
#   wait --bake seconds, then ask Prometheus (scripts/canary_gate.py): the canary's error ratio
#   (grpc_server_handled_total) and p95 latency (grpc_server_handling_seconds) against stable's.
# A failed gate or a failed upgrade sets canary.weight=0 (the canary pods stay up for
# debugging) and exits 1. After the 100% step passes, the canary's tag becomes the stable image
# (stable rolls while the canary still carries all calls) and the canary is switched off.
#
# Options (defaults in brackets):
#   --release NAME            Helm release [tollgate]
#   --namespace NS            Kubernetes namespace [helm's current one]; also matches namespace="NS"
#                             in the queries unless --no-namespace-match
#   --chart PATH              chart to upgrade with [k8s/tollgate of this checkout]
#   --tag TAG                 canary image tag [the release's canary.image.tag]
#   --steps "N N ..."         canary weights, ascending, 1-100 ["10 50 100"]
#   --bake SECONDS            wait after each step before the gate [600]
#   --window DURATION         PromQL rate window; keep it within --bake [5m]
#   --prometheus-url URL      Prometheus base URL [$PROMETHEUS_URL]
#   --service NAME            grpc_service to judge [tollgate.v1.Router]
#   --min-requests N          canary calls in the window needed to judge [100]
#   --max-error-ratio R       canary error ratio limit [0.01]
#   --max-error-increase R    allowed canary error ratio above stable's [0.005]
#   --max-p95-ratio X         allowed canary p95 as a multiple of stable's [1.2]
#   --max-p95-seconds S       absolute canary p95 limit [none]
#   --helm-timeout DURATION   helm --timeout per upgrade [10m]
#   --reset-then-reuse-values use helm's --reset-then-reuse-values instead of --reuse-values: needed
#                             when the chart of this checkout has new values the release lacks
#   --dry-run                 print the plan (commands, gate queries and limits); change nothing
#   --gate-only               evaluate the gate once now and exit (0 pass, 1 fail, 2 no answer)
# Exit status: 0 promoted (or gate passed), 1 gate or upgrade failed (canary set to 0%),
# 2 usage error, 3 the rollback itself failed (act by hand: k8s/RUNBOOK.md "Rollback").
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
RELEASE=tollgate
NAMESPACE=
CHART=$ROOT/k8s/tollgate
TAG=
STEPS="10 50 100"
BAKE=600
WINDOW=5m
PROMETHEUS_URL=${PROMETHEUS_URL:-}
SERVICE=tollgate.v1.Router
MIN_REQUESTS=100
MAX_ERROR_RATIO=0.01
MAX_ERROR_INCREASE=0.005
MAX_P95_RATIO=1.2
MAX_P95_SECONDS=
HELM_TIMEOUT=10m
NAMESPACE_MATCH=1
REUSE=--reuse-values
DRY_RUN=0
GATE_ONLY=0

log() { printf 'canary: %s\n' "$*" >&2; }
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
  exit 0
}
die_usage() {
  log "$*"
  exit 2
}

while (($#)); do
  case $1 in
    --release) RELEASE=${2:?}; shift ;;
    --namespace) NAMESPACE=${2:?}; shift ;;
    --chart) CHART=${2:?}; shift ;;
    --tag) TAG=${2:?}; shift ;;
    --steps) STEPS=${2:?}; shift ;;
    --bake) BAKE=${2:?}; shift ;;
    --window) WINDOW=${2:?}; shift ;;
    --prometheus-url) PROMETHEUS_URL=${2:?}; shift ;;
    --service) SERVICE=${2:?}; shift ;;
    --min-requests) MIN_REQUESTS=${2:?}; shift ;;
    --max-error-ratio) MAX_ERROR_RATIO=${2:?}; shift ;;
    --max-error-increase) MAX_ERROR_INCREASE=${2:?}; shift ;;
    --max-p95-ratio) MAX_P95_RATIO=${2:?}; shift ;;
    --max-p95-seconds) MAX_P95_SECONDS=${2:?}; shift ;;
    --helm-timeout) HELM_TIMEOUT=${2:?}; shift ;;
    --no-namespace-match) NAMESPACE_MATCH=0 ;;
    --reset-then-reuse-values) REUSE=--reset-then-reuse-values ;;
    --dry-run) DRY_RUN=1 ;;
    --gate-only) GATE_ONLY=1 ;;
    -h | --help) usage ;;
    *) die_usage "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

# --- validate the plan before touching anything
read -r -a STEP_LIST <<<"$STEPS"
((${#STEP_LIST[@]})) || die_usage "--steps is empty"
prev=0
for w in "${STEP_LIST[@]}"; do
  # No leading zeros: bash arithmetic would read 010 as octal.
  if ! [[ $w =~ ^[1-9][0-9]*$ ]] || ((w > 100)); then
    die_usage "--steps: $w is not a weight from 1 to 100"
  fi
  ((w > prev)) || die_usage "--steps must ascend: $STEPS"
  prev=$w
done
[[ $BAKE =~ ^[0-9]+$ ]] || die_usage "--bake must be whole seconds: $BAKE"
[[ $WINDOW =~ ^[0-9]+[smh]$ ]] || die_usage "--window must be a PromQL duration like 5m: $WINDOW"
if [[ -n $TAG && ! $TAG =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; then
  die_usage "--tag is not a valid image tag: $TAG"
fi
if ((!DRY_RUN)) && [[ -z $PROMETHEUS_URL ]]; then
  die_usage "--prometheus-url (or PROMETHEUS_URL) is required"
fi

NS_ARGS=()
[[ -n $NAMESPACE ]] && NS_ARGS=(--namespace "$NAMESPACE")
GATE_ARGS=(--prometheus-url "${PROMETHEUS_URL:-<--prometheus-url>}" --service "$SERVICE" --window "$WINDOW"
  --min-requests "$MIN_REQUESTS" --max-error-ratio "$MAX_ERROR_RATIO"
  --max-error-increase "$MAX_ERROR_INCREASE" --max-p95-ratio "$MAX_P95_RATIO")
[[ -n $MAX_P95_SECONDS ]] && GATE_ARGS+=(--max-p95-seconds "$MAX_P95_SECONDS")
[[ -n $NAMESPACE && $NAMESPACE_MATCH == 1 ]] && GATE_ARGS+=(--match "namespace=\"$NAMESPACE\"")

gate() {
  python3 "$ROOT/scripts/canary_gate.py" "${GATE_ARGS[@]}"
}

if ((GATE_ONLY)); then
  gate
  exit $?
fi

# run CMD... — print the command; run it unless --dry-run.
run() {
  printf '+ %s\n' "$*" >&2
  ((DRY_RUN)) || "$@"
}

upgrade() {
  run helm upgrade "$RELEASE" "$CHART" "${NS_ARGS[@]}" "$REUSE" --wait --timeout "$HELM_TIMEOUT" "$@"
}

rollback() {
  log "ROLLBACK: $1; sending no calls to the canary (canary.weight=0)"
  if ! upgrade --set canary.weight=0; then
    log "the rollback upgrade failed too: set the weight by hand (k8s/RUNBOOK.md, Rollback)"
    exit 3
  fi
  log "canary at 0%; its pods stay up for debugging (canary.enabled=false removes them)"
  exit 1
}

if [[ -z $TAG ]]; then
  if ((DRY_RUN)); then
    TAG="<canary.image.tag of release $RELEASE>"
  else
    TAG=$(helm get values "$RELEASE" "${NS_ARGS[@]}" --all -o json |
      python3 -c 'import json,sys; print(((json.load(sys.stdin).get("canary") or {}).get("image") or {}).get("tag") or "")') ||
      die_usage "could not read the release's values with helm get values"
    [[ -n $TAG ]] || die_usage "the release has no canary.image.tag: pass --tag"
  fi
  TAG_SET=()
else
  TAG_SET=(--set-string "canary.image.tag=$TAG")
fi

log "release $RELEASE${NAMESPACE:+ in $NAMESPACE}, canary tag $TAG, steps ${STEP_LIST[*]}%, bake ${BAKE}s, window $WINDOW"
if ((DRY_RUN)); then
  log "dry run: the plan (nothing is changed)"
  log "gate after each step: python3 scripts/canary_gate.py ${GATE_ARGS[*]}"
  python3 "$ROOT/scripts/canary_gate.py" "${GATE_ARGS[@]}" --print-queries >&2
fi

for w in "${STEP_LIST[@]}"; do
  log "step: canary.weight=$w"
  upgrade --set canary.enabled=true "${TAG_SET[@]}" --set "canary.weight=$w" || rollback "helm upgrade to weight $w failed"
  if ((DRY_RUN)); then
    log "would wait ${BAKE}s, then gate on Prometheus"
    continue
  fi
  log "baking for ${BAKE}s"
  sleep "$BAKE"
  status=0
  gate || status=$?
  ((status == 0)) || rollback "gate failed at weight $w (status $status)"
  log "gate passed at weight $w"
done

if [[ ${STEP_LIST[-1]} != 100 ]]; then
  log "stopped at ${STEP_LIST[-1]}% as asked; not promoting"
  exit 0
fi
log "promote: stable takes image tag $TAG (the canary keeps 100% meanwhile), then the canary goes"
# A failed promotion leaves the canary (which passed every gate) carrying all calls: safer than
# sending them back to a stable Deployment that is half rolled.
upgrade --set-string "image.tag=$TAG" || {
  log "promoting $TAG to stable failed; the canary still carries 100%: see k8s/RUNBOOK.md, Canary"
  exit 1
}
upgrade --set canary.enabled=false --set canary.weight=0 ||
  {
    log "stable runs $TAG but switching the canary off failed: rerun the last helm upgrade"
    exit 1
  }
if ((DRY_RUN)); then
  log "dry run done: nothing was changed"
else
  log "done: stable runs $TAG, canary off"
fi

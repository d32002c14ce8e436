#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster of vmdesk's own, for the team-store
# tests and a newcomer's machine; no systemd or init scripts needed, and the
# Debian package's own cluster (if any) is left alone. Idempotent: does nothing
# but rewrite the env file when the cluster already answers.
# Usage: scripts/postgres.sh [start|stop|status|env]
#
# Everything lives in one directory, /run/vmdesk-postgres unless VMDESK_PG_DIR
# names another (owned by the `postgres` user when run as root, else by the
# user who runs it; a symlink, another owner or group/other write access is
# refused):
#   data/           the cluster (initdb; superuser vmdesk_super, scram-sha-256)
#   superuser.pw    its random password (hex, 0600)
#   tls/            a throwaway CA (ca.crt, ca.key) and the server's certificate
#                   for localhost and 127.0.0.1 signed by it (server.crt, .key)
#   sock/           the unix socket (0755: any local user may connect)
#   log             the server's log
#   env             VMDESK_PG_URL, _HOST, _PORT, _SOCKET, _CA, _SUPERUSER,
#                   _PASSWORD as shell lines (0600, the caller's: root's as root)
# The server listens on 127.0.0.1, port VMDESK_PG_PORT (5544), plain and TLS.
# `stop` stops it and keeps the data; removing the directory starts afresh.
set -euo pipefail

DIR="${VMDESK_PG_DIR:-/run/vmdesk-postgres}"
PORT="${VMDESK_PG_PORT:-5544}"
HOST=127.0.0.1
SUPERUSER=vmdesk_super
DATA="$DIR/data"
SOCK="$DIR/sock"
TLS="$DIR/tls"

say() { echo "postgres: $*"; }
fail() { echo "postgres: $*" >&2; exit 1; }

case "$PORT" in
  ''|*[!0-9]*) fail "VMDESK_PG_PORT must be a port number, not '$PORT'" ;;
esac
case "$DIR" in
  /*) ;;
  *) fail "VMDESK_PG_DIR must be an absolute path, not '$DIR'" ;;
esac
case "$DIR" in
  *"'"*|*' '*) fail "VMDESK_PG_DIR must not contain quotes or spaces: '$DIR'" ;;
esac

# The newest PostgreSQL installed (Debian: /usr/lib/postgresql/<major>/bin).
BIN=""
for d in /usr/lib/postgresql/*/bin; do
  [ -x "$d/pg_ctl" ] || continue
  if [ -z "$BIN" ] || [ "$(basename "$(dirname "$d")")" -gt "$(basename "$(dirname "$BIN")")" ] 2>/dev/null; then
    BIN="$d"
  fi
done

# As root the server runs as `postgres` (PostgreSQL refuses to run as root);
# otherwise as the calling user.
if [ "$(id -u)" -eq 0 ]; then
  OWNER=postgres
  as_owner() { (cd / && runuser -u postgres -- "$@"); }
else
  OWNER="$(id -un)"
  as_owner() { "$@"; }
fi

# Writes stdin to FILE as the server's user (0600), through a new file that
# replaces FILE.
owner_write() {
  # shellcheck disable=SC2016 # $1 is the inner shell's
  as_owner bash -c 'umask 077 && cat > "$1.tmp" && mv -f -- "$1.tmp" "$1"' _ "$1"
}

need_bin() {
  [ -n "$BIN" ] || fail "PostgreSQL is not installed (run scripts/setup-system.sh)"
  command -v openssl >/dev/null || fail "openssl is not installed (run scripts/setup-system.sh)"
  if [ "$OWNER" = postgres ] && ! id postgres >/dev/null 2>&1; then
    fail "the user postgres does not exist (run scripts/setup-system.sh)"
  fi
}

refuse() { fail "refusing the directory $DIR: $1"; }

# Makes (or checks) the directory: a real directory of the server's user, not
# writable by group or others, open for reading (the socket, the CA).
cluster_dir() {
  if [ -L "$DIR" ]; then refuse "it is a symlink"; fi
  if [ ! -e "$DIR" ]; then
    mkdir -p -- "$(dirname -- "$DIR")" || fail "cannot make $(dirname -- "$DIR") (set VMDESK_PG_DIR)"
    # mkdir (without -p) fails if someone made it meanwhile: checked below.
    if mkdir -m 0755 -- "$DIR" 2>/dev/null && [ "$OWNER" = postgres ]; then
      chown postgres:postgres -- "$DIR"
    fi
  fi
  if [ -L "$DIR" ]; then refuse "it is a symlink"; fi
  [ -d "$DIR" ] || refuse "it is not a directory"
  local owner mode
  owner=$(stat -c %U -- "$DIR")
  mode=$(stat -c %a -- "$DIR")
  [ "$owner" = "$OWNER" ] || refuse "it is owned by $owner, not $OWNER"
  if (( 8#$mode & 8#022 )); then refuse "it is writable by group or others (mode $mode)"; fi
  as_owner mkdir -p -m 0755 -- "$SOCK" "$TLS"
  as_owner chmod 0755 -- "$SOCK" "$TLS"
}

answers() {
  [ -n "$BIN" ] && [ -d "$SOCK" ] && "$BIN/pg_isready" -q -t 2 -h "$SOCK" -p "$PORT" -d postgres >/dev/null 2>&1
}

# The processes of this cluster: their working directory is its data directory.
cluster_pids() {
  local real p
  real=$(realpath -- "$DATA" 2>/dev/null) || return 0
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/cwd" 2>/dev/null)" = "$real" ] && echo "${p#/proc/}"
  done
  return 0
}

# The postmaster of postmaster.pid, if that process is alive and this cluster's.
live_postmaster() {
  local pid
  [ -f "$DATA/postmaster.pid" ] || return 1
  pid=$(head -n1 "$DATA/postmaster.pid" 2>/dev/null) || return 1
  case "$pid" in ''|*[!0-9]*) return 1 ;; esac
  # (Not `cluster_pids | grep -q`: under pipefail, grep leaving early fails it.)
  grep -qx -- "$pid" <<<"$(cluster_pids)" || return 1
  echo "$pid"
}

# After a postmaster died (kill -9), its lock files name a dead or reused pid
# and its children may still hold the shared memory for a moment: wait for
# them (they leave when they notice), then take the stale lock files away.
clear_stale() {
  local pids p cmd
  for p in $(cluster_pids); do
    # A postmaster (not a dead one's child) is still there: never kill it.
    cmd=$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in
      */postgres\ -D*) fail "a server (pid $p) still runs on $DATA; try '$0 stop'" ;;
    esac
  done
  for _ in $(seq 1 100); do
    pids=$(cluster_pids)
    [ -n "$pids" ] || break
    sleep 0.1
  done
  if [ -n "$pids" ]; then
    echo "postgres: killing leftover processes of a dead server: ${pids//$'\n'/ }" >&2
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.5
  fi
  if [ -e "$DATA/postmaster.pid" ]; then
    rm -f -- "$DATA/postmaster.pid"
    echo "postgres: removed the stale $DATA/postmaster.pid" >&2
  fi
  rm -f -- "$SOCK"/.s.PGSQL.*
}

init_cluster() {
  if [ -e "$DATA" ] && [ ! -f "$DATA/PG_VERSION" ]; then
    echo "postgres: removing a half-made cluster in $DATA" >&2
    rm -rf -- "$DATA"
  fi
  if [ -f "$DATA/PG_VERSION" ]; then
    [ -s "$DIR/superuser.pw" ] || fail "$DATA exists but $DIR/superuser.pw is gone; remove $DIR to start afresh"
    return 0
  fi
  openssl rand -hex 24 | owner_write "$DIR/superuser.pw"
  as_owner "$BIN/initdb" -D "$DATA" -U "$SUPERUSER" -A scram-sha-256 --pwfile="$DIR/superuser.pw" \
    -E UTF8 --locale=C --no-sync >"$DIR/initdb.log" 2>&1 \
    || { cat "$DIR/initdb.log" >&2; fail "initdb failed (log above, in $DIR/initdb.log)"; }
  echo "include_if_exists = 'vmdesk.conf'" | as_owner tee -a "$DATA/postgresql.conf" >/dev/null
}

# A throwaway CA and a server certificate for localhost and 127.0.0.1.
make_tls() {
  if [ -s "$TLS/ca.crt" ] && [ -s "$TLS/server.crt" ] && [ -s "$TLS/server.key" ]; then return 0; fi
  # shellcheck disable=SC2016 # the inner shell expands its own $1
  as_owner bash -c '
    set -euo pipefail
    cd "$1"
    umask 077
    rm -f ca.key ca.crt server.key server.csr server.crt
    cat > ca.cnf <<CNF
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = vmdesk throwaway test CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CNF
    cat > server.ext <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT
    openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 -config ca.cnf \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" \
      -keyout server.key -out server.csr 2>/dev/null
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
      -days 3650 -sha256 -extfile server.ext -out server.crt 2>/dev/null
    rm -f server.csr ca.cnf server.ext
    chmod 0644 ca.crt server.crt
    chmod 0600 ca.key server.key
  ' _ "$TLS" || fail "could not make the TLS certificates in $TLS"
}

write_conf() {
  owner_write "$DATA/vmdesk.conf" <<CONF
# Written by scripts/postgres.sh at every start; edits are lost.
listen_addresses = '$HOST'
port = $PORT
unix_socket_directories = '$SOCK'
unix_socket_permissions = 0777
ssl = on
ssl_cert_file = '$TLS/server.crt'
ssl_key_file = '$TLS/server.key'
max_connections = 300
shared_buffers = 128MB
password_encryption = scram-sha-256
CONF
  owner_write "$DATA/pg_hba.conf" <<HBA
# Written by scripts/postgres.sh at every start; edits are lost.
# TYPE  DATABASE USER ADDRESS       METHOD
local   all      all                scram-sha-256
hostssl all      all  127.0.0.1/32  scram-sha-256
host    all      all  127.0.0.1/32  scram-sha-256
HBA
}

# The env file, written by the caller (root as root) into a fresh file that
# replaces the old one: never through a name someone else could have planted.
write_env() {
  local pw tmp
  pw=$(cat -- "$DIR/superuser.pw")
  case "$pw" in ''|*[!0-9a-f]*) fail "$DIR/superuser.pw does not hold a hex password" ;; esac
  tmp=$(mktemp -- "$DIR/.env.XXXXXX")
  chmod 0600 -- "$tmp"
  cat > "$tmp" <<ENV
VMDESK_PG_URL=postgres://$SUPERUSER:$pw@$HOST:$PORT/postgres
VMDESK_PG_HOST=$HOST
VMDESK_PG_PORT=$PORT
VMDESK_PG_SOCKET=$SOCK
VMDESK_PG_CA=$TLS/ca.crt
VMDESK_PG_SUPERUSER=$SUPERUSER
VMDESK_PG_PASSWORD=$pw
ENV
  mv -f -- "$tmp" "$DIR/env"
}

where() { echo "$HOST:$PORT, socket $SOCK"; }

start() {
  need_bin
  cluster_dir
  if answers && live_postmaster >/dev/null; then
    write_env
    say "already running ($(where))"
    return 0
  fi
  init_cluster
  make_tls
  write_conf
  if live_postmaster >/dev/null; then
    # Running, but not answering: still starting (give it a moment), or on
    # another port (an earlier VMDESK_PG_PORT): restart it on the new settings.
    if [ "$(sed -n 4p "$DATA/postmaster.pid" 2>/dev/null)" = "$PORT" ]; then
      for _ in $(seq 1 50); do answers && break; sleep 0.1; done
    fi
    if ! answers; then
      as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DIR/log" -w -t 60 restart -m fast >/dev/null \
        || { tail -n 20 "$DIR/log" >&2; fail "could not restart; see $DIR/log"; }
    fi
  else
    clear_stale
    as_owner touch "$DIR/log"
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DIR/log" -w -t 60 start >/dev/null \
      || { tail -n 20 "$DIR/log" >&2; fail "did not start; see $DIR/log"; }
  fi
  for _ in $(seq 1 100); do
    if answers; then
      write_env
      say "ready ($(where))"
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$DIR/log" >&2 || true
  fail "did not come up; see $DIR/log"
}

stop() {
  if [ -z "$BIN" ] || ! live_postmaster >/dev/null; then
    say "not running"
    return 0
  fi
  as_owner "$BIN/pg_ctl" -D "$DATA" -w -t 60 stop -m fast >/dev/null || fail "did not stop; see $DIR/log"
  say "stopped (data kept in $DATA)"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) if answers; then echo running; else echo stopped; exit 1; fi ;;
  env)
    [ -f "$DIR/env" ] || fail "no $DIR/env; run '$0 start' first"
    cat -- "$DIR/env"
    ;;
  *) echo "usage: $0 [start|stop|status|env]" >&2; exit 2 ;;
esac

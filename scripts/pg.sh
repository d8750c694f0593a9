# Throwaway PostgreSQL clusters for tests and benchmarks. Sourced, not run.
#   pg_start_throwaway [extra postgres -c settings...]  sets PG_URL, PG_DIR, PG_BIN, PG_PORT,
#       PG_CERTS. The cluster also serves TLS, with a CA and certificates made for it here
#       (host names localhost and 127.0.0.1; it listens on 127.0.0.1 and 127.0.0.2, the second
#       for a host-name mismatch), and its pg_hba.conf refuses plaintext for the roles
#       clerk_tls, clerk_cert (certificate authentication) and clerk_scram (password, SCRAM).
#   pg_stop_throwaway
#   bouncer_start NAME POOL_MODE CLIENT_TLS_SSLMODE [CERT_NAME]   a PgBouncer in front of the
#       cluster (installed when missing); sets BOUNCER_PORT. CERT_NAME: server (default) or
#       expired, from PG_CERTS.

pg_find_bin() {
  local dir
  for dir in /usr/lib/postgresql/15/bin $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -Vr); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      PG_BIN=$dir
      return 0
    fi
  done
  if command -v initdb >/dev/null 2>&1; then
    PG_BIN=$(dirname "$(command -v initdb)")
    return 0
  fi
  return 1
}

pg_install() {
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "PostgreSQL server not found: installing it with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "PostgreSQL server binaries (initdb, pg_ctl) not found; install PostgreSQL 15 or set CLERK_SYNC_TEST_DATABASE_URL" >&2
    return 1
  fi
}

# Runs a command as the cluster's owner: postgres refuses to run as root.
pg_as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

pg_start_throwaway() {
  pg_find_bin || { pg_install && pg_find_bin; } || return 1
  PG_DIR=$(mktemp -d /tmp/clerk-sync-pg.XXXXXX)
  chmod 755 "$PG_DIR"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home "$PG_DIR" postgres
    chown postgres "$PG_DIR"
  fi
  local port options
  port=$(pg_free_port)
  PG_CERTS=$PG_DIR/certs
  make_test_certs "$PG_CERTS" || return 1
  options="-p $port -k $PG_DIR -c listen_addresses=127.0.0.1,127.0.0.2 -c max_connections=300"
  options="$options -c ssl=on -c ssl_cert_file=$PG_CERTS/server.pem -c ssl_key_file=$PG_CERTS/server.key -c ssl_ca_file=$PG_CERTS/ca.pem"
  for s in "$@"; do options="$options -c $s"; done
  pg_as_owner "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust --no-sync -E UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; return 1; }
  cat >"$PG_DIR/data/pg_hba.conf" <<'HBA'
local     all all                                        trust
hostnossl all clerk_tls,clerk_cert,clerk_scram 0.0.0.0/0 reject
hostssl   all clerk_cert  0.0.0.0/0                      cert
hostssl   all clerk_scram 0.0.0.0/0                      scram-sha-256
host      all all         127.0.0.1/32                   trust
host      all all         127.0.0.2/32                   trust
HBA
  pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "$options" start >/dev/null \
    || { cat "$PG_DIR/server.log" >&2; return 1; }
  PG_PORT=$port
  PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
  "$PG_BIN/psql" -q -X "$PG_URL?sslmode=disable" -v ON_ERROR_STOP=1 >/dev/null <<'SQL' || return 1
CREATE ROLE clerk_tls LOGIN SUPERUSER;
CREATE ROLE clerk_cert LOGIN SUPERUSER;
CREATE ROLE clerk_scram LOGIN SUPERUSER PASSWORD 'scram-test-password';
SQL
  echo "started a throwaway PostgreSQL ($("$PG_BIN/postgres" --version)) at 127.0.0.1:$port, TLS on" >&2
}

# A CA and the certificates the tests use, made with the openssl command (only the tests'
# certificates: clerk-sync itself is built with rustls, never OpenSSL).
make_test_certs() { # dir
  local d=$1
  mkdir -p "$d/ca-db"
  (
    set -e
    cd "$d"
    ossl() { openssl "$@" >/dev/null 2>&1; }
    ossl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 30 -subj "/CN=clerk-sync test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    ossl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.pem -days 30 -subj "/CN=an untrusted CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >server.ext
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >client.ext
    ossl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost"
    ossl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 30 -extfile server.ext
    # The same names, valid only in 2020: `openssl ca` is what sets dates in the past.
    : >ca-db/index.txt
    echo 1000 >ca-db/serial
    cat >ca.cnf <<CNF
[ca]
default_ca = test
[test]
dir = $d/ca-db
database = $d/ca-db/index.txt
serial = $d/ca-db/serial
new_certs_dir = $d/ca-db
certificate = $d/ca.pem
private_key = $d/ca.key
default_md = sha256
policy = any
copy_extensions = none
[any]
commonName = supplied
CNF
    ossl req -newkey rsa:2048 -nodes -keyout expired.key -out expired.csr -subj "/CN=localhost"
    ossl ca -batch -config ca.cnf -in expired.csr -out expired.pem -startdate 20200101000000Z -enddate 20200201000000Z -extfile server.ext
    ossl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj "/CN=clerk_cert"
    ossl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 30 -extfile client.ext
    ossl pkcs12 -export -in client.pem -inkey client.key -certfile ca.pem -out client.p12 -passout pass:p12-test-password
    chmod 600 ./*.key
  ) || { echo "making the test certificates failed (is the openssl command installed?)" >&2; return 1; }
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$d"; fi
}

bouncer_find() {
  PGBOUNCER=$(command -v pgbouncer || ls /usr/sbin/pgbouncer 2>/dev/null || true)
  [ -n "$PGBOUNCER" ]
}

bouncer_start() { # name pool_mode client_tls_sslmode [cert]
  local name=$1 mode=$2 tls=$3 cert=${4:-server} dir port
  if ! bouncer_find; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "PgBouncer not found: installing it with apt-get" >&2
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; } \
        || { echo "installing pgbouncer failed" >&2; return 1; }
      bouncer_find || return 1
    else
      echo "PgBouncer not found; install Debian's pgbouncer package" >&2
      return 1
    fi
  fi
  dir=$PG_DIR/bouncer-$name
  mkdir -p "$dir"
  port=$(pg_free_port)
  printf '"postgres" ""\n"clerk_tls" ""\n' >"$dir/users.txt"
  cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$PG_PORT user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = $mode
max_client_conn = 1000
default_pool_size = 40
max_db_connections = 60
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
client_tls_sslmode = $tls
client_tls_cert_file = $PG_CERTS/$cert.pem
client_tls_key_file = $PG_CERTS/$cert.key
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
  # PgBouncer 1.21 and later can track prepared statements (on by default from 1.24): turn
  # that off, so that this is the pooler the tests mean, one without prepared-statement
  # support (Debian 12's 1.18, Supabase's shared pooler).
  local version
  version=$("$PGBOUNCER" --version | awk 'NR == 1 {print $2}')
  if [ "$(printf '%s\n1.21\n' "$version" | sort -V | head -1)" = 1.21 ]; then
    sed -i 's/^\[pgbouncer\]$/[pgbouncer]\nmax_prepared_statements = 0/' "$dir/pgbouncer.ini"
  fi
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$dir"; fi
  pg_as_owner "$PGBOUNCER" -d "$dir/pgbouncer.ini" || { cat "$dir/pgbouncer.log" >&2; return 1; }
  local i
  for i in $(seq 1 100); do
    "$PG_BIN/psql" -q -X "postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable" -c "SELECT 1" >/dev/null 2>&1 && break
    [ "$tls" = require ] && "$PG_BIN/psql" -q -X "postgres://postgres@127.0.0.1:$port/postgres?sslmode=require" -c "SELECT 1" >/dev/null 2>&1 && break
    sleep 0.05
  done
  BOUNCER_PORT=$port
  echo "started PgBouncer $name ($("$PGBOUNCER" --version | head -1), $mode mode, client TLS $tls) at 127.0.0.1:$port" >&2
}

pg_stop_throwaway() {
  local pidfile
  for pidfile in "${PG_DIR:-/nonexistent}"/bouncer-*/pgbouncer.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
  done
  if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ]; then
    pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}

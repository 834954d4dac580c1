#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the tests: a fresh data directory under a
# temporary directory, listening only on 127.0.0.1 on a free port, owned by a non-root user
# (PostgreSQL refuses to run as root; the tests run as root in CI). It takes TCP connections
# over TLS only (a throwaway CA in DIR/ca.pem signs its certificate for 127.0.0.1), so every
# test against it goes through the Director's verified TLS, as a deployment does.
#
#   eval "$(tools/pg-test-cluster.sh start)"   # exports DIRECTOR_TEST_POSTGRES and PG_TEST_DIR
#   tools/pg-test-cluster.sh stop "$PG_TEST_DIR"
#
# PostgreSQL comes from Debian's packages (`postgresql`, and `openssl` for the certificates);
# `start` installs them when missing and apt-get can. Exits non-zero if the cluster cannot start: nothing is skipped silently.
set -euo pipefail

bin_dir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    return 1
}

case "${1:-}" in
start)
    if ! bin_dir > /dev/null; then
        echo "PostgreSQL is not installed: installing Debian's package" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
    fi
    if ! command -v openssl > /dev/null; then
        echo "openssl is not installed (the cluster's certificates): installing Debian's package" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl >&2
    fi
    bin="$(bin_dir)"
    # The cluster's owner: the `postgres` user Debian's package makes, or the caller when
    # not root.
    owner="$(id -un)"
    if [ "$(id -u)" -eq 0 ]; then
        owner=postgres
    fi
    as_owner() {
        if [ "$(id -un)" = "$owner" ]; then "$@"; else runuser -u "$owner" -- "$@"; fi
    }
    dir="$(mktemp -d /tmp/pg-test.XXXXXX)"
    chown "$owner" "$dir"
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync > "$dir/initdb.log"
    # A CA for this cluster alone, and the server's certificate for 127.0.0.1.
    (
        cd "$dir"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj /CN=pg-test-ca -keyout ca.key -out ca.pem 2> /dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj /CN=127.0.0.1 -keyout server.key -out server.csr 2> /dev/null
        printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
            -extfile server.ext -out server.crt 2> /dev/null
        rm -f ca.key server.csr ca.srl server.ext
        chown "$owner" server.key server.crt
        chmod 600 server.key
    )
    # TCP only with TLS; the socket in DIR for the owner's tools.
    printf 'local all all trust\nhostssl all all 127.0.0.1/32 trust\n' > "$dir/data/pg_hba.conf"
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=400 -c fsync=on -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key" \
        start > /dev/null
    echo "export PG_TEST_DIR=$dir"
    echo "export DIRECTOR_TEST_POSTGRES='postgres://postgres@127.0.0.1:$port/postgres?sslmode=verify-full&sslrootcert=$dir/ca.pem'"
    ;;
stop)
    dir="${2:?the cluster directory printed by start}"
    bin="$(bin_dir)"
    owner="$(stat -c %U "$dir")"
    if [ "$(id -un)" = "$owner" ]; then
        "$bin/pg_ctl" -D "$dir/data" -m immediate stop > /dev/null || true
    else
        runuser -u "$owner" -- "$bin/pg_ctl" -D "$dir/data" -m immediate stop > /dev/null || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start | stop DIR" >&2
    exit 2
    ;;
esac

# Shared by scripts/demo and scripts/test: install what is missing, build, throwaway Postgres.
# Source it; it defines functions only.

# Installs the Postgres server (Debian's `postgresql`) if absent and the wasm32-wasip2 target.
ensure_prerequisites() {
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        echo "==> installing PostgreSQL (apt)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    if ! command -v curl >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
    fi
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        echo "==> adding the wasm32-wasip2 Rust target"
        rustup target add wasm32-wasip2
    fi
}

pg_bin() {
    ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# pg_start DIR: starts a throwaway cluster in DIR (as user postgres: initdb refuses root) on a
# free port; sets PG_PORT, PG_DIR and PG_ADMIN_URL.
pg_start() {
    PG_DIR=$1
    local bin
    bin=$(pg_bin)
    rm -rf "$PG_DIR"
    mkdir -p "$PG_DIR/data" "$PG_DIR/sock"
    chown -R postgres:postgres "$PG_DIR"
    chmod 700 "$PG_DIR/data"
    runuser -u postgres -- "$bin/initdb" -D "$PG_DIR/data" -A trust -U postgres >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log"; return 1; }
    PG_PORT=$(free_port)
    runuser -u postgres -- "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w start \
        -o "-p $PG_PORT -k $PG_DIR/sock -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" >/dev/null \
        || { cat "$PG_DIR/server.log"; return 1; }
    PG_ADMIN_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
}

pg_stop() {
    [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ] || return 0
    runuser -u postgres -- "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
}

build_plugins() {
    cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release --quiet
}

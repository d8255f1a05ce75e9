# Shared by scripts/demo and scripts/test: install what is missing, build the plugins, and run a
# throwaway Postgres cluster. Source it; it defines functions only.

# Installs the Postgres server (Debian's `postgresql`), curl, promtool (Debian's `prometheus`, for
# the monitoring rules' checks), systemd-analyze and kubectl (Debian's `systemd` and
# `kubernetes-client`, for the packaging checks), Chromium and its WebDriver (Debian's `chromium`
# and `chromium-driver`, for the console's browser test), the wasm32-wasip2 target, osmem-server and
# componentize-py if absent.
ensure_prerequisites() {
    local missing=()
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3)
    command -v promtool >/dev/null || missing+=(prometheus)
    # The packaging checks (tests/operations/packaging.rs): `systemd-analyze verify` on the unit,
    # `kubectl kustomize` on the Kubernetes base (Debian's kubectl 1.20 has it).
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    command -v kubectl >/dev/null || missing+=(kubernetes-client)
    # The console's browser test (tests/operations/console.rs).
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]} (apt)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        echo "==> adding the wasm32-wasip2 Rust target" >&2
        rustup target add wasm32-wasip2
    fi
    ensure_osmem
    ensure_componentize_py
}

# pip install, also on a Debian system Python that refuses plain installs (PEP 668).
pip_install() {
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    fi
    python3 -m pip install --quiet "$@" 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages "$@"
}

# Python plugins are built with componentize-py (PyPI), pinned to the version the tests and
# docs/plugins.md were checked with. The tests run `componentize-py` from PATH (or
# $COMPONENTIZE_PY) and fail, not skip, without it.
COMPONENTIZE_PY_VERSION=0.25.1
ensure_componentize_py() {
    if [ -z "${COMPONENTIZE_PY:-}" ] \
        && ! componentize-py --version 2>/dev/null | grep -qx "componentize-py $COMPONENTIZE_PY_VERSION"; then
        echo "==> installing componentize-py $COMPONENTIZE_PY_VERSION (pip)" >&2
        pip_install "componentize-py==$COMPONENTIZE_PY_VERSION"
    fi
    if [ -z "${COMPONENTIZE_PY:-}" ] && ! command -v componentize-py >/dev/null; then
        # pip put the script where PATH does not look (a --user install, say): name it.
        local bin
        bin=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/componentize-py
        [ -x "$bin" ] || bin=$(python3 -m site --user-base)/bin/componentize-py
        export COMPONENTIZE_PY=$bin
    fi
}

# The search tests' server: osmem-server (PyPI), an in-memory OpenSearch-compatible Go binary.
# pip does not put it on PATH; the tests find it through the Python package (or OSMEM_SERVER_BIN).
ensure_osmem() {
    command -v osmem-server >/dev/null && return 0
    [ -n "${OSMEM_SERVER_BIN:-}" ] && return 0
    python3 -c 'import osmem_server' 2>/dev/null && return 0
    echo "==> installing osmem-server (pip)" >&2
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    fi
    # Debian's system Python refuses plain installs (PEP 668); the binary has no Python deps.
    python3 -m pip install --quiet osmem-server 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages osmem-server
}

build_plugins() {
    cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release --quiet
}

pg_bin() {
    ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# initdb and postgres refuse to run as root: run them as `postgres` then.
as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_start DIR: a throwaway cluster in DIR (created, must not hold anything else) on a free port.
# Sets PG_DIR, PG_PORT and PG_ADMIN_URL. fsync is off (the data is thrown away) unless PG_FSYNC=on
# (scripts/bench: Postgres defaults, as in production).
pg_start() {
    PG_DIR=$1
    local bin
    bin=$(pg_bin)
    rm -rf "$PG_DIR"
    mkdir -p "$PG_DIR/sock"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$PG_DIR"
    as_postgres "$bin/initdb" -D "$PG_DIR/data" -A trust -U postgres -E UTF8 --locale=C --no-sync \
        >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; return 1; }
    local _
    for _ in 1 2 3 4 5; do
        PG_PORT=$(free_port)
        if as_postgres "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 start \
            -o "-p $PG_PORT -k $PG_DIR/sock -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=${PG_FSYNC:-off}" \
            >/dev/null; then
            PG_ADMIN_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
            return 0
        fi
    done
    echo "could not start PostgreSQL:" >&2
    cat "$PG_DIR/server.log" >&2
    return 1
}

pg_stop() {
    [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ] || return 0
    as_postgres "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
}

#!/usr/bin/env bash
# What one batch's database work costs per event, three ways, on the same throwaway cluster
# (fsync on) and the same 100,000 noop events on 10,000 aggregates (docs/scaling.md, "What the
# claim's writes cost"), with the functions docs/experiments/heads_only.py writes from the
# statements themselves:
#   current_batch  the shipped ordered claim (claim_ordered.sql + claim_returning.sql) and settle
#                  (settle.sql), every outcome a success, run inside one PL/pgSQL call;
#   happy_batch    the heads-only happy path prototype;
#   queue_batch    the bench's independent queue, claim then ack.
# Each is drained by one pgbench session, one call (batch of 500) per transaction, and measured
# as the whole machine's busy CPU over the drain, in ms per 1,000 events. Needs the release host
# built (`cargo build -p projector --release`) for `projector migrate`.
#
#   docs/experiments/heads_only.sh [events] [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/setup.sh
N=${1:-100000}; ROUNDS=${2:-2}
case "$N" in ''|*[!0-9]*) N=x ;; esac
case "$ROUNDS" in ''|*[!0-9]*) ROUNDS=0 ;; esac
if [ "$N" = x ] || [ $((N % 5000)) -ne 0 ] || [ "$N" -eq 0 ] || [ "$ROUNDS" -lt 1 ]; then
    echo "heads_only.sh: events must be a positive multiple of 5000 (batches of 500, events/10 aggregates) and rounds a positive number, got '${1:-}' '${2:-}'" >&2
    exit 2
fi
projector=${CARGO_TARGET_DIR:-target}/release/projector
[ -x "$projector" ] || { echo "heads_only.sh: build the host first: cargo build -p projector --release" >&2; exit 2; }
work=$(mktemp -d /tmp/projector-heads-only.XXXXXX)
trap 'pg_stop; rm -rf "$work" "${PG_DIR:-}"' EXIT
PG_FSYNC=on pg_start "$(mktemp -d /tmp/projector-heads-only-pg.XXXXXX)"
pgbench=$(pg_bin)/pgbench

python3 docs/experiments/heads_only.py "$work/functions.sql"

busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
for round in $(seq 1 "$ROUNDS"); do
    for f in current_batch happy_batch queue_batch; do
        psql -q "$PG_ADMIN_URL" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS proto" -c "CREATE DATABASE proto" >/dev/null
        url="postgres://postgres@127.0.0.1:$PG_PORT/proto"
        "$projector" migrate --database-url "$url" >/dev/null 2>&1
        psql -q -v ON_ERROR_STOP=1 "$url" >/dev/null <<SQL
INSERT INTO outbox_events (projection, event_type, aggregate_type, aggregate_id, payload)
SELECT 'exp', 'book.updated', 'book', 'book-' || (i % ($N / 10)),
       jsonb_build_object('title', 'The benchmark book number ' || i,
                          'content', repeat('lorem ipsum dolor sit amet ', 8))
FROM generate_series(1, $N) AS i;
VACUUM ANALYZE outbox_events; VACUUM ANALYZE outbox_heads;
SQL
        psql -q -v ON_ERROR_STOP=1 "$url" -f "$work/functions.sql" >/dev/null
        echo "SELECT $f('exp', 500);" >"$work/call.sql"
        b0=$(busy)
        "$pgbench" -n -c 1 -t $((N / 500)) -f "$work/call.sql" "$url" >"$work/pgbench.log" 2>&1 \
            || { cat "$work/pgbench.log" >&2; exit 1; }
        b1=$(busy)
        ticks=$(getconf CLK_TCK)
        # Drained: no head left (current, happy), no job left undone (queue).
        left=$(psql -tAq "$url" -c "SELECT CASE WHEN '$f' = 'queue_batch'
            THEN (SELECT count(*) FROM bench_jobs WHERE status <> 'done')
            ELSE (SELECT count(*) FROM outbox_heads) END")
        [ "$left" = 0 ] || { echo "heads_only.sh: $f left $left undrained" >&2; exit 1; }
        echo "round $round  $f: $(( (b1 - b0) * 1000 * 1000 / ticks / N )) ms of CPU per 1,000 events"
    done
done

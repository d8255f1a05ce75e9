"""Writes the PL/pgSQL functions of docs/experiments/heads_only.sh to the file named by argv[1].

Each runs one batch per call, claim and settle (or ack) in one transaction, and returns how
many events it took. Built from the statements themselves, so they follow the code:
  current_batch  host/store/src/outbox/claim_ordered.sql + claim_returning.sql, then
                 settle.sql with every outcome a success;
  happy_batch    the heads-only happy path (docs/scaling.md), which was not built: the shipped
                 claim's heads walk (taken from claim_ordered.sql), one event per aggregate,
                 the heads marked in flight as the claim marks them, and a settle that moves or
                 removes each head as settle.sql does for a success. It writes no event row,
                 records no per-event `done_at` and takes no claim turn: a lower bound of the
                 design, not the design;
  queue_batch    the bench's independent queue (host/bench/src/queue.rs: SCHEMA, CLAIM, ACK),
                 seeded with the outbox's payloads.
"""
import re
import sys

OUTBOX = "host/store/src/outbox/"
claim = open(OUTBOX + "claim_ordered.sql").read() + open(OUTBOX + "claim_returning.sql").read()
settle = open(OUTBOX + "settle.sql").read()
queue_rs = open("host/bench/src/queue.rs").read()


def rust_const(name):
    return re.search(r'const %s: &str = "(.*?)";' % name, queue_rs, re.S).group(1)


walk = claim[claim.index("WITH RECURSIVE walk AS"):claim.index("runs AS (")].rstrip().rstrip(",")
walk = "\n".join(l for l in walk.split("\n") if not l.strip().startswith("--"))
walk = walk.replace("$1", "p_projection")

open(sys.argv[1], "w").write(f"""
CREATE FUNCTION current_batch(p_projection text, p_batch int) RETURNS int LANGUAGE plpgsql AS $f$
DECLARE r record; seqs bigint[] := '{{}}'; b uuid := gen_random_uuid(); k int;
BEGIN
  FOR r IN EXECUTE $q${claim}$q$
      USING p_projection, p_batch::int8, 'w'::text, b, 1::int8, 5, 30.0::float8, 1048576, 65536,
            1024, 4194304::int8 LOOP
    seqs := seqs || r.seq;
  END LOOP;
  k := coalesce(array_length(seqs, 1), 0);
  EXECUTE $q${settle}$q$
      USING b, seqs, array_fill('success'::text, ARRAY[k]), array_fill(NULL::text, ARRAY[k]),
            array_fill(NULL::text, ARRAY[k]), array_fill(0::float8, ARRAY[k]), 5, 'v'::text;
  RETURN k;
END $f$;

CREATE FUNCTION happy_batch(p_projection text, p_batch int) RETURNS int LANGUAGE plpgsql AS $f$
DECLARE seqs bigint[]; aggs text[]; bytes bigint;
BEGIN
  {walk},
  runs AS (
    SELECT e.seq, e.payload_text, h.aggregate_id, h.head_tid
    FROM walk h
    CROSS JOIN LATERAL (
      SELECT e.seq, e.payload::text AS payload_text FROM outbox_events e
      WHERE e.projection = p_projection AND e.aggregate_id = h.aggregate_id
        AND e.seq >= h.next_seq AND e.status <> 'done' AND e.status <> 'skipped'
      ORDER BY e.seq LIMIT 1) e
    WHERE NOT EXISTS (SELECT 1 FROM projection_pauses pp WHERE pp.projection = p_projection)
    LIMIT p_batch),
  marked AS (
    UPDATE outbox_heads h SET claimed_until = now() + interval '30 seconds'
    FROM (SELECT m.ctid AS tid FROM outbox_heads m
          WHERE m.ctid = ANY (ARRAY(SELECT head_tid FROM runs))
          FOR UPDATE OF m SKIP LOCKED) k
    WHERE h.ctid = k.tid)
  SELECT array_agg(seq), array_agg(aggregate_id), sum(octet_length(payload_text))
  INTO seqs, aggs, bytes FROM runs;
  WITH s AS (SELECT unnest(seqs) AS seq, unnest(aggs) AS agg),
  nxt AS (
    SELECT h.ctid AS tid,
           (SELECT o.seq FROM outbox_events o
            WHERE o.projection = p_projection AND o.aggregate_id = s.agg AND o.seq > s.seq
              AND o.status <> 'done' AND o.status <> 'skipped'
            ORDER BY o.seq LIMIT 1) AS next_seq
    FROM s
    CROSS JOIN LATERAL (SELECT h.ctid FROM outbox_heads h
                        WHERE h.projection = p_projection AND h.aggregate_id = s.agg
                        FOR UPDATE SKIP LOCKED) h),
  gone AS (DELETE FROM outbox_heads h USING nxt WHERE h.ctid = nxt.tid AND nxt.next_seq IS NULL)
  UPDATE outbox_heads h SET next_seq = nxt.next_seq, claimed_until = '-infinity',
                            version = h.version + 1
  FROM nxt WHERE h.ctid = nxt.tid AND nxt.next_seq IS NOT NULL;
  RETURN coalesce(array_length(seqs, 1), 0);
END $f$;

{rust_const("SCHEMA")}
INSERT INTO bench_jobs (payload) SELECT payload FROM outbox_events ORDER BY seq;
VACUUM ANALYZE bench_jobs;

CREATE FUNCTION queue_batch(p_projection text, p_batch int) RETURNS int LANGUAGE plpgsql AS $f$
DECLARE r record; ids bigint[] := '{{}}';
BEGIN
  FOR r IN EXECUTE $q${rust_const("CLAIM")}$q$ USING p_batch::int8, 'w'::text LOOP
    ids := ids || r.id;
  END LOOP;
  EXECUTE $q${rust_const("ACK")}$q$ USING ids, 'w'::text;
  RETURN coalesce(array_length(ids, 1), 0);
END $f$;
""")

-- The columns both claims return (appended to claim_ordered.sql and claim_unordered.sql, whose
-- UPDATE names the claimed row `e` and its pre-claim copy `c` with `previous_status` and
-- `payload_text`), decoded by claim.rs as `BoundedRow`: a field over its bound ($8 payload, $9
-- headers, $10 names) comes back NULL, followed by every field's size.
RETURNING e.seq, e.id,
          CASE WHEN octet_length(e.event_type) <= $10 THEN e.event_type END,
          CASE WHEN octet_length(e.aggregate_type) <= $10 THEN e.aggregate_type END,
          CASE WHEN octet_length(e.aggregate_id) <= $10 THEN e.aggregate_id END,
          CASE WHEN octet_length(c.payload_text) <= $8 THEN c.payload_text END,
          CASE WHEN octet_length(e.headers::text) <= $9 THEN e.headers END,
          e.occurred_at, e.attempts, c.previous_status = 'processing' AS reclaimed,
          octet_length(c.payload_text)::int8, octet_length(e.headers::text)::int8,
          octet_length(e.event_type)::int8, octet_length(e.aggregate_type)::int8,
          octet_length(e.aggregate_id)::int8

-- Takes projection $1's sweep for this interval (migration 0012): returns a row only when no
-- host swept it in the last $2 seconds (float8), and records the sweep as done now. A host that
-- waits here for another host taking it finds the sweep fresh and gets nothing.
INSERT INTO outbox_sweeps AS s (projection, swept_at) VALUES ($1, now())
ON CONFLICT (projection) DO UPDATE SET swept_at = now()
WHERE s.swept_at <= now() - make_interval(secs => $2)
RETURNING s.projection

-- Housekeeping once per interval across all hosts, not once per host (issue 13).
--
-- Every host ran the exhausted-lease sweep and the empty-heads sweep every
-- OUTBOX_RECLAIM_INTERVAL_SECONDS, and the gauge query every OUTBOX_METRICS_REFRESH_SECONDS, for
-- each of its projections. The sweep and the gauges read the whole backlog: with 100k events
-- pending they took 120-190 ms a call. In a 15 s drain of 50k events by four hosts
-- (pg_stat_statements) they took 4.2 s of database time, against 10.5 s for all the claims and
-- 6.6 s for all the settles; one host spends a quarter of that.
--
-- `outbox_sweeps`: when a projection was last swept. A host sweeps only after taking the
-- projection's row for this interval (an upsert whose condition is that the last sweep is old
-- enough); a host that finds it taken, or waits for another host taking it, skips the sweep.
CREATE TABLE outbox_sweeps (
    projection text PRIMARY KEY,
    swept_at   timestamptz NOT NULL
);

-- `outbox_gauges`: the last gauge reading of each projection, taken by one host for all. A host
-- whose refresh falls due takes the row (as above), reads the outbox and stores what it read;
-- the others read the stored reading. The age of the oldest unfinished event is stored as its
-- creation time, so a reader's age is current.
CREATE TABLE outbox_gauges (
    projection        text PRIMARY KEY,
    refreshed_at      timestamptz NOT NULL,
    lag               bigint      NOT NULL DEFAULT 0,
    inflight          bigint      NOT NULL DEFAULT 0,
    stuck             bigint      NOT NULL DEFAULT 0,
    blocked           bigint      NOT NULL DEFAULT 0,
    oldest_created_at timestamptz
);

-- Every recorded version of projection $1, oldest first, with the number of events whose final
-- outcome it produced (rows of VersionRow).
SELECT v.id, v.projection, v.digest, v.declared_version, v.version_label, v.status, v.reason,
       v.loaded_at, v.activated_at, v.activated_by, v.source,
       (SELECT count(*) FROM outbox_events e
        WHERE e.projection = v.projection AND e.projection_version = v.version_label) AS events
FROM plugin_versions v
WHERE v.projection = $1
ORDER BY v.id

-- The active version of projection $1 that a host recorded with its component: (id, digest,
-- version label, source, when it was first given to a host, when it was activated, who
-- activated it, component), or no row.
SELECT id, digest, version_label, source, loaded_at, activated_at, activated_by, component
FROM plugin_versions
WHERE projection = $1 AND status = 'active' AND component IS NOT NULL

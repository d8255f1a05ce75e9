-- The active plugin version of projection $1 (or of every projection when $1 is NULL):
-- (projection, version label, digest, activated_at, activated_by, source).
SELECT projection, version_label AS version, digest, activated_at, activated_by, source
FROM plugin_versions
WHERE status = 'active' AND ($1::text IS NULL OR projection = $1)

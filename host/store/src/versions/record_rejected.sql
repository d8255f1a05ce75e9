-- Records that the component with digest $2 was refused as a version of projection $1, with the
-- reason $3. A version once accepted (active or retired) keeps its status; a rejected one gets
-- the latest reason and time.
INSERT INTO plugin_versions (projection, digest, status, reason)
VALUES ($1, $2, 'rejected', $3)
ON CONFLICT (projection, digest) DO UPDATE SET reason = EXCLUDED.reason, loaded_at = now()
WHERE plugin_versions.status = 'rejected'

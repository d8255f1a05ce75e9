-- Records a version of projection $1 as active (new, or a known one re-activated).
--   $2: sha256 digest of the component    $3: describe().name    $4: describe().version
--   $5: the version label stamped on events    $6: the component's bytes    $7: who activated it
--   $8: where the activation came from: 'file', 'upload', 'rollback', 'canary' or 'promote'
INSERT INTO plugin_versions (projection, digest, declared_name, declared_version, version_label,
                             component, status, activated_at, activated_by, source)
VALUES ($1, $2, $3, $4, $5, $6, 'active', now(), $7, $8)
ON CONFLICT (projection, digest) DO UPDATE
SET status = 'active', activated_at = now(), activated_by = EXCLUDED.activated_by,
    component = EXCLUDED.component, reason = NULL, source = EXCLUDED.source

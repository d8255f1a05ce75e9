-- Records a version of projection $1 as its canary (new, or a known one tried again), and
-- returns its id. The caller has checked it is not the active version.
--   $2: sha256 digest of the component    $3: describe().name    $4: describe().version
--   $5: the version label stamped on events    $6: the component's bytes    $7: who started it
INSERT INTO plugin_versions (projection, digest, declared_name, declared_version, version_label,
                             component, status, activated_at, activated_by, source)
VALUES ($1, $2, $3, $4, $5, $6, 'canary', now(), $7, 'canary')
ON CONFLICT (projection, digest) DO UPDATE
SET status = 'canary', activated_at = now(), activated_by = EXCLUDED.activated_by,
    component = EXCLUDED.component, reason = NULL, source = 'canary'
RETURNING id

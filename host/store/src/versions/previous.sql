-- The component of the version of projection $1 that was active before the current one: the
-- retired version activated last, or no row. A canary that never became active (rolled back or
-- aborted: retired with source 'canary') is not one.
SELECT component FROM plugin_versions
WHERE projection = $1 AND status = 'retired' AND component IS NOT NULL
  AND source IS DISTINCT FROM 'canary'
ORDER BY activated_at DESC NULLS LAST, id DESC
LIMIT 1

-- The component of the version of projection $1 that was active before the current one: the
-- retired version activated last, or no row.
SELECT component FROM plugin_versions
WHERE projection = $1 AND status = 'retired' AND component IS NOT NULL
ORDER BY activated_at DESC NULLS LAST, id DESC
LIMIT 1

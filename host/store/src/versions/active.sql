-- The active version of projection $1 that a host recorded with its component: (digest,
-- component), or no row.
SELECT digest, component FROM plugin_versions
WHERE projection = $1 AND status = 'active' AND component IS NOT NULL

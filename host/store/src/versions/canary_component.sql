-- The component of the version canary $1 (plugin_canaries.id) runs.
SELECT v.component FROM plugin_canaries c JOIN plugin_versions v ON v.id = c.canary_id
WHERE c.id = $1 AND v.component IS NOT NULL

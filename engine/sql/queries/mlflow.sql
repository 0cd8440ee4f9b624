-- The MLflow tracking endpoint of `engine web` (engine/web/mlflow.py): MLflow's ids mapped
-- onto the engine's rows. An experiment is a project (its id is the project's id), a run is
-- found by its run id alone (MLflow ids are global; the endpoint makes them uuids), a
-- registered model is a registry collection, a model version a registry link.

-- name: mlflow_project_by_name
SELECT id, entity, name, created_at FROM projects WHERE entity = %(entity)s AND name = %(project)s;

-- name: mlflow_project_by_id
SELECT id, entity, name, created_at FROM projects WHERE id = %(id)s;

-- name: mlflow_create_project
-- Nothing back when the project exists already (MLflow: RESOURCE_ALREADY_EXISTS).
INSERT INTO projects (entity, name) VALUES (%(entity)s, %(project)s)
ON CONFLICT (entity, name) DO NOTHING
RETURNING id;

-- name: mlflow_run
-- A run by its id in any project (two rows back: the id is not unique, the caller says so).
SELECT r.id, r.state, p.id, p.entity, p.name, r.run_id, r.name, r.user_name, r.config, r.tags,
       r.created_at, r.finished_at
FROM runs r JOIN projects p ON p.id = r.project_id
WHERE r.run_id = %(run_id)s
LIMIT 2;

-- name: mlflow_lock_run_attributes
SELECT name, user_name, config, tags FROM runs WHERE id = %(run_pk)s FOR UPDATE;

-- name: mlflow_set_run_attributes
UPDATE runs SET name = %(name)s, user_name = %(user)s, config = %(config)s, tags = %(tags)s
WHERE id = %(run_pk)s;

-- name: mlflow_run_metrics
-- The last finite value of each metric of a run (runs/get: MLflow's `data.metrics`), read
-- from the series tails rather than the points.
SELECT k.key, s.tail_value[cardinality(s.tail_value)], s.tail_time[cardinality(s.tail_time)],
       s.tail_step[cardinality(s.tail_step)]
FROM series_state s JOIN metric_keys k ON k.id = s.key_id
WHERE s.run_pk = %(run_pk)s AND cardinality(s.tail_value) > 0
ORDER BY k.key;

-- name: mlflow_registered_model
SELECT c.id, c.name, c.created_at FROM registry_collections c JOIN registries g ON g.id = c.registry_id
WHERE g.name = %(registry)s AND c.name = %(name)s;

-- name: mlflow_model_versions
-- Links of a registry collection (all, or the one at `version_index`), with their aliases.
SELECT l.id, l.version_index, l.linked_at, v.metadata, r.run_id,
       coalesce(array_agg(a.alias ORDER BY a.alias) FILTER (WHERE a.alias IS NOT NULL), '{}')
FROM registry_links l
JOIN artifact_versions v ON v.id = l.version_id
LEFT JOIN runs r ON r.id = v.run_pk
LEFT JOIN registry_aliases a ON a.link_id = l.id
WHERE l.registry_collection_id = %(collection_id)s
  AND (%(version_index)s::int IS NULL OR l.version_index = %(version_index)s::int)
GROUP BY l.id, v.id, r.id
ORDER BY l.version_index;

-- name: mlflow_alias_link
-- The index of the link an alias points to.
SELECT l.version_index FROM registry_aliases a JOIN registry_links l ON l.id = a.link_id
WHERE a.registry_collection_id = %(collection_id)s AND a.alias = %(alias)s;

-- name: mlflow_delete_alias
DELETE FROM registry_aliases WHERE registry_collection_id = %(collection_id)s AND alias = %(alias)s
RETURNING link_id;

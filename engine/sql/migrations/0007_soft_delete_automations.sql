-- Deleting an automation (`engine rules delete`, or `rules apply --prune`) keeps its trigger
-- history: automation_history is an audit log. Before this migration the row was deleted and
-- ON DELETE CASCADE took its versions, triggers, deliveries and attempts with it.
--
-- Why a soft delete (`deleted_at`) rather than ON DELETE SET NULL with the name copied onto
-- each trigger: the audit log then still says which rule fired (triggers.automation_version
-- points into automation_versions, which a SET NULL would lose), deliveries still pending
-- render their templates from the automation's row as before, and the view and every
-- query that joins triggers to automations keep working unchanged.
--
-- * A deleted automation is disabled (the CHECK below), so whatever evaluates or counts
--   enabled automations ignores it without knowing about deletion; its automation_state
--   row is deleted with it, so a tick that loaded it before cannot lock and evaluate it.
-- * Names are unique among live automations only: a deleted name can be applied again. The
--   new automation gets a new id, so its history stays apart from the old one's.
-- * Rows are never deleted by the engine any more; one deleted by hand would still erase
--   history, so the foreign keys that did that now refuse it.
ALTER TABLE automations ADD COLUMN deleted_at timestamptz;
ALTER TABLE automations ADD CONSTRAINT automations_deleted_is_disabled CHECK (deleted_at IS NULL OR NOT enabled);
ALTER TABLE automations DROP CONSTRAINT automations_name_key;
CREATE UNIQUE INDEX automations_live_name ON automations (name) WHERE deleted_at IS NULL;

ALTER TABLE automation_versions
    DROP CONSTRAINT automation_versions_automation_id_fkey,
    ADD CONSTRAINT automation_versions_automation_id_fkey
        FOREIGN KEY (automation_id) REFERENCES automations (id) ON DELETE RESTRICT;
ALTER TABLE triggers
    DROP CONSTRAINT triggers_automation_id_fkey,
    ADD CONSTRAINT triggers_automation_id_fkey
        FOREIGN KEY (automation_id) REFERENCES automations (id) ON DELETE RESTRICT;
ALTER TABLE deliveries
    DROP CONSTRAINT deliveries_automation_id_fkey,
    ADD CONSTRAINT deliveries_automation_id_fkey
        FOREIGN KEY (automation_id) REFERENCES automations (id) ON DELETE RESTRICT;

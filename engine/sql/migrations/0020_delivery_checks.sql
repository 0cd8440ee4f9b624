-- A tick inserts its triggers and their deliveries in one transaction: with 1,000 rules,
-- thousands of each. Two foreign keys of deliveries were checked for every delivery (an index
-- probe and a row lock each, ~40 % of a delivery's cost) and guard nothing that the way
-- deliveries are made does not:
-- * trigger_id: every delivery is made from a trigger of its own transaction (insert_triggers:
--   the trigger rows it inserted, or those a metric group's statement inserted just before),
--   or for a digest, from the digest's first trigger, which digests keeps (ON DELETE RESTRICT).
--   What the key did besides, deleting a trigger's deliveries with it (ON DELETE CASCADE), the
--   trigger below does, once per statement.
-- * automation_id: a delivery's automation is its trigger's (both are written from the same
--   row), and triggers.automation_id keeps the automation (ON DELETE RESTRICT).
-- Kept: every key of triggers (their automation, run, event and artifact version) and the
-- other keys of deliveries (silence_id, and those pointing at deliveries).
ALTER TABLE deliveries DROP CONSTRAINT deliveries_trigger_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_automation_id_fkey;

CREATE FUNCTION delete_trigger_deliveries() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM deliveries d USING gone g WHERE d.trigger_id = g.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER triggers_delete_deliveries AFTER DELETE ON triggers
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION delete_trigger_deliveries();

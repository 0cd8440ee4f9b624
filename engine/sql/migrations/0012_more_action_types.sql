-- Deliveries of the e-mail, Discord, Teams and PagerDuty actions (engine/actions/outbox.py
-- ACTION_TYPES lists the same names).
ALTER TABLE deliveries DROP CONSTRAINT deliveries_action_type_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_action_type_check
    CHECK (action_type IN ('webhook', 'slack', 'email', 'discord', 'teams', 'pagerduty', 'no_op'));

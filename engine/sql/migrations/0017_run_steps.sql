-- A run's current steps, kept on the run by every flush (in its transaction): where the next
-- `run.log` without a step continues, read per log request by `engine web` and on resume.
-- Computing them as max(step) of the run's points read every point of the run, so a log
-- request got slower as its run grew.
ALTER TABLE runs
    ADD COLUMN step bigint NOT NULL DEFAULT -1,
    ADD COLUMN system_step bigint NOT NULL DEFAULT -1;

UPDATE runs AS r SET step = m.step
FROM (SELECT run_pk, max(step) AS step FROM metric_points GROUP BY run_pk) AS m
WHERE r.id = m.run_pk;

UPDATE runs AS r SET system_step = m.step
FROM (SELECT run_pk, max(step) AS step FROM system_metrics GROUP BY run_pk) AS m
WHERE r.id = m.run_pk;

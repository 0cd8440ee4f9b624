-- The highest `seq` a flush wrote (every point of the batch has a seq at or below it, and
-- every later flush of the same run a seq above it). With it, the evaluator reads a series
-- from the hypertable only up to the positions it evaluates — a backlog can then be
-- evaluated in parts (an automation that failed catches up flush by flush). NULL for rows
-- written before this migration: those series are read up to their newest value, as before.
ALTER TABLE series_batches ADD COLUMN seq_bound bigint;

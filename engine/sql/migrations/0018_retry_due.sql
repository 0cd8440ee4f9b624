-- The dispatcher claims due retries (pending again after a failed attempt) before the other
-- due deliveries: this finds them without walking past a backlog of first attempts.
CREATE INDEX deliveries_retry_due ON deliveries (next_attempt_at) WHERE status = 'pending' AND attempts > 0;

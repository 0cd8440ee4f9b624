-- The SDK's ingest batches. Each flush takes one id and numbers its points
-- seq = (batch_id << 20) | ordinal (ordinal < 2^20), so seq fits a bigint while
-- batch_id < 2^43. Flushes of one process run one at a time, so a run's batches get
-- increasing ids and its seq follows logging order (see engine/sdk/writer.py).
CREATE SEQUENCE ingest_batch_seq AS bigint MINVALUE 1 MAXVALUE 8796093022207;

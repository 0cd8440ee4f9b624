-- series_state rows are rewritten by every flush that touches their series. With a full
-- tail (ENGINE_SERIES_TAIL = 128 steps, times and values: ~3 KB) a row passes the default
-- TOAST threshold (~2 KB), so each upsert compressed the arrays or moved them out of line,
-- and each evaluation decompressed them again. Keeping rows up to a page inline made a
-- flush touching 50,000 series ~3x faster (16-18 s -> ~6 s, bench/evaluate.py's logger).
-- Longer tails (ENGINE_SERIES_TAIL up to 300 fits a page) still get TOASTed past 8 KB.
ALTER TABLE series_state SET (toast_tuple_target = 8160);

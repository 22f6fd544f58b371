-- Several carrier trunks: the call record names the `[[trunk]]` that
-- carried the call (the last one tried after a failover).
ALTER TABLE calls ADD COLUMN trunk TEXT;

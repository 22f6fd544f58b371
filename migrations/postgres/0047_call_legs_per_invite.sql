-- The leg journal gets one row per INVITE in flight, not one per call: an
-- agent leg forked to several phones sends one INVITE per phone under one
-- Call-ID, and after a crash each must be CANCELled on its own branch
-- (RFC 3261 §9.1). The key becomes (call_id, branch): the ringing
-- INVITE's Via branch, or '' for a confirmed dialog (ended by one BYE).
-- Existing rows (one per call) get '' and stay usable.
ALTER TABLE call_legs ADD COLUMN branch TEXT NOT NULL DEFAULT '';
ALTER TABLE call_legs DROP CONSTRAINT call_legs_pkey;
ALTER TABLE call_legs ADD PRIMARY KEY (call_id, branch);

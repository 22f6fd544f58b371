-- A contact's email addresses (shown to the agent in the call bar beside
-- the phones; never dialed), as a JSON array of strings; NULL when none.
ALTER TABLE contacts ADD COLUMN emails TEXT;

-- The agent's notes on a call (SPEC §1 step 5: the notes typed during and
-- after the call, saved with it through `PATCH /api/v1/calls/{id}`).
ALTER TABLE calls ADD COLUMN notes TEXT;

-- The customer's segment (`vip`, `wholesale`, ...), set by the
-- SetCustomerSegment helpdesk command and matched by rule files'
-- `match.segments`; NULL for none. The embedded store keeps it in its
-- journal.
ALTER TABLE customers ADD COLUMN segment TEXT;

-- Indexes for merges and for threading in batches (keep sqlite/ and
-- postgres/ in step).

-- A merge repoints earlier losers (`WHERE id = $1 OR merged_into = $1`),
-- and the timeline query reads a survivor's merged customers: without
-- this, both scan every customer.
CREATE INDEX customers_merged_into ON customers (merged_into) WHERE merged_into IS NOT NULL;

-- A batch reads the suggestions of its handles, whoever they name.
CREATE INDEX suggested_links_handle ON suggested_links (kind, scope, value);

-- Never used: conversations are read by customer (conversations_customer)
-- or by id, and the subject is compared among those rows. Each email
-- conversation paid for it on every write.
DROP INDEX conversations_subject;

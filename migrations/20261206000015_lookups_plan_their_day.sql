-- The lookups of migration 14 plan their one day on every call. After five calls a
-- function's query may switch to a generic plan, made once per connection for every day
-- kept and reused: it locks every day on each call, and it keeps the plan chosen for each
-- day when it was made. A day that was empty then (today's partition, made days ahead and
-- analyzed while empty) keeps a sequential scan as it fills. Measured on the 10M fixture
-- with 100,000 contacts: 3.6 ms per call by the afternoon, and the writers fell from 8,700
-- to 480 webhooks a second until the connections were renewed. A custom plan reads the
-- day's size as it is, and planning one day costs microseconds.
alter function reply_of(text) set plan_cache_mode = force_custom_plan;
alter function session_inbound_count(text, text, timestamptz)
    set plan_cache_mode = force_custom_plan;

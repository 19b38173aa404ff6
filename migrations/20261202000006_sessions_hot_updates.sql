-- Every inbound message extends its session: last_inbound_at, expires_at and inbound_count
-- change on each one. The index on expires_at made each of those updates a new row version
-- with three new index entries (a non-HOT update); with no index on a column that changes,
-- Postgres updates the row in place on its page (HOT) and writes no index entry at all.
drop index sessions_expires_at_idx;

-- Retention finds expired sessions by their start: a session that expired before a cutoff
-- started before it. started_at never changes, so this index costs no update anything.
create index sessions_started_at_idx on sessions (started_at);

-- Only a conversation's current session can be open (a message at or after a window's end
-- opens a new session), and its conversation row holds when that window closes. The view
-- keeps its columns; it now reads conversations instead of an index on expires_at.
create or replace view open_sessions as
select s.business,
       s.contact,
       s.started_at,
       s.last_inbound_at,
       s.expires_at,
       s.inbound_count,
       s.expires_at - now() as time_left
from conversations c
join sessions s on s.business = c.business
               and s.contact = c.contact
               and s.started_at = c.session_started_at
where c.window_expires_at > now()
  and s.expires_at > now();

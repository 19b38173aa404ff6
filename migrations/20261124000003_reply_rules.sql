-- Reply rules: the opt-in / opt-out state of each (business, contact), set by rules with
-- `consent = "opt_out" | "opt_in"`, with the message that last changed it.
create table consent (
    business     text not null,
    contact      text not null,
    state        text not null check (state in ('opted_in', 'opted_out')),
    -- the inbound message whose rule set this state
    message_sid  text not null,
    changed_at   timestamptz not null,
    primary key (business, contact)
);

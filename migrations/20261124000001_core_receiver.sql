-- The core receiver: inbound messages stored once, their media, the conversation of each
-- (business, contact) pair with its 24-hour customer-service windows, and the TwiML reply
-- given to each inbound message (replayed verbatim when Twilio retries).
-- Statuses are free text on purpose: Twilio adds values, and unknown ones must still be kept.

-- One row per message SID, inbound or outbound.
create table messages (
    message_sid            text primary key,
    account_sid            text not null,
    messaging_service_sid  text,
    direction              text not null check (direction in ('inbound', 'outbound')),
    -- 'whatsapp', 'sms' (no prefix) or another channel's address prefix
    channel                text not null,
    -- our address (the business sender), e.g. 'whatsapp:+14155238886'
    business               text not null,
    -- the user's address, e.g. 'whatsapp:+15551234567'
    contact                text not null,
    body                   text,
    num_media              integer,
    num_segments           integer,
    profile_name           text,
    wa_id                  text,
    -- Meta's business-scoped user id ('whatsapp:ID.…'), stable when the number is hidden
    external_user_id       text,
    -- WhatsApp MessageType: text, location, contacts, interactive, button, ...
    message_type           text,
    latitude               double precision,
    longitude              double precision,
    location_address       text,
    location_label         text,
    button_text            text,
    button_payload         text,
    -- OriginalRepliedMessageSid / OriginalRepliedMessageSender: the message the user quoted
    replied_to_sid         text,
    replied_to_sender      text,
    forwarded              boolean,
    frequently_forwarded   boolean,
    -- click-to-WhatsApp ad attribution (sent once, on the message after the ad click)
    referral_source_type   text,
    referral_source_id     text,
    referral_source_url    text,
    referral_headline      text,
    referral_body          text,
    referral_ctwa_clid     text,
    from_country           text,
    to_country             text,
    -- ChannelMetadata parsed from its JSON string; NULL when it does not parse
    channel_metadata       jsonb,
    -- current status: 'received' for inbound messages
    status                 text,
    error_code             integer,
    error_message          text,
    -- when this server first received the message (Twilio sends no timestamp)
    received_at            timestamptz not null,
    updated_at             timestamptz not null,
    -- every parameter exactly as received; a repeated name holds an array of its values
    params                 jsonb not null
);

create index messages_conversation_idx on messages (business, contact, received_at);
create index messages_received_at_idx on messages (received_at);

-- MediaUrl{N} / MediaContentType{N} of each message.
create table message_media (
    message_sid   text not null references messages (message_sid) on delete cascade,
    index         integer not null,
    url           text not null,
    content_type  text,
    primary key (message_sid, index)
);

-- One row per (business, contact) pair.
create table conversations (
    business            text not null,
    contact             text not null,
    channel             text not null,
    first_inbound_at    timestamptz,
    last_inbound_at     timestamptz,
    last_outbound_at    timestamptz,
    -- the 24-hour customer-service window closes here (last_inbound_at + 24 h)
    window_expires_at   timestamptz,
    -- start of the current window (sessions.started_at of the newest session)
    session_started_at  timestamptz,
    inbound_count       bigint not null default 0,
    outbound_count      bigint not null default 0,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    primary key (business, contact)
);

-- One row per 24-hour window. A message at or after expires_at opens a new row; an earlier
-- one extends the current row.
create table sessions (
    id               bigint generated always as identity primary key,
    business         text not null,
    contact          text not null,
    started_at       timestamptz not null,
    last_inbound_at  timestamptz not null,
    expires_at       timestamptz not null,
    inbound_count    integer not null,
    unique (business, contact, started_at),
    foreign key (business, contact) references conversations (business, contact) on delete cascade
);

create index sessions_expires_at_idx on sessions (expires_at);

-- The TwiML answered to each inbound message, replayed verbatim to Twilio's retries.
create table replies (
    message_sid  text primary key references messages (message_sid) on delete cascade,
    -- the rule that answered; NULL for the configured default reply (or no reply)
    rule         text,
    twiml        text not null,
    created_at   timestamptz not null default now()
);

-- Every message of every conversation, in time order when sorted by `at`.
create view conversation_messages as
select business,
       contact,
       channel,
       direction,
       message_sid,
       received_at as at,
       status,
       body,
       num_media,
       message_type,
       profile_name
from messages;

-- The customer-service windows open right now, and how long each has left.
create view open_sessions as
select business,
       contact,
       started_at,
       last_inbound_at,
       expires_at,
       inbound_count,
       expires_at - now() as time_left
from sessions
where expires_at > now();

-- The rules that answered a message were stored comma-separated in one text column; they
-- are an array now, so SQL can unnest and count them without parsing (a rule name can never
-- contain a comma: the rules file refuses one). NULL still means no rule answered.
alter table replies
    alter column rule type text[]
    using case when rule is null or rule = '' then null else string_to_array(rule, ',') end;

comment on column replies.rule is
    'the rules that answered, in order; NULL for the default reply or no reply';

-- The write statement stores a whole batch and then checks that no other transaction
-- changed one of its conversations since it read them. This raises the check's own
-- SQLSTATE, so a conflict is told apart from every real error.
create function write_check(consistent boolean) returns boolean
language plpgsql
set search_path from current
as $$
begin
    if not consistent then
        raise exception 'a conversation changed between the read and the write of a batch'
            using errcode = 'TR409';
    end if;
    return true;
end
$$;

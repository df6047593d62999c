-- Client addresses and user agents in event metadata are sealed under their person's key and
-- the key of their day (`period_day`), so the worker can destroy a whole day's worth once it is
-- older than PII_METADATA_RETENTION_DAYS: the events keep their actor and lose the address and
-- agent. A day's key is a row like a person's, whose subject id is derived from the day.
alter table subject_keys add column period_day date;

create unique index subject_keys_period_day on subject_keys (period_day) where period_day is not null;

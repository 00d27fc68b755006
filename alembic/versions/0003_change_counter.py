"""Change counters for the read cache: one row per handler group, bumped and announced by writers.

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-15

The read cache (``omejdn_pg.postgres.cache``) keeps point reads in process
memory and must hear of every committed change. It hears through PostgreSQL
alone:

* ``omejdn_pg_changes`` — one row per handler group (``config``, ``keys``,
  ``client``, ``user``) with a counter that rises by exactly one per committed
  transaction that changed the group. The writer's row lock, held from the
  bump to the commit, makes the counters commit-ordered, so a listener that
  polls a value above the last one it heard knows it missed something.
* ``omejdn_pg_changed(group, VARIADIC key)`` — what every write of this
  package calls last in its transaction: bumps the group's counter (once per
  transaction) and sends ``NOTIFY omejdn_pg_changes, '<group>:<key>:<counter>:<ms>'``,
  delivered only if the transaction commits. After 63 keys of one group in
  one transaction (an import), one whole-group notice (key ``*``) replaces the
  rest. Other writers (hand SQL, scripts) call it too: ``SELECT
  omejdn_pg_changed('config', 'omejdn')``; without a key it means the whole group.
* a trigger on ``keys`` that announces every changed target, whoever writes
  it — the key lifecycle commands, a Ruby Omejdn sharing the database, hand
  SQL — because a stale signing key is the one staleness nobody may risk. It
  sends no counter (it takes no lock), so it adds no contention to any writer.

Key parts are escaped (``%`` ``/`` ``:`` ``*`` as ``%25`` ``%2F`` ``%3A`` ``%2A``) and
joined by ``/``; a key longer than 1,000 bytes is announced as its whole group,
far below NOTIFY's 8,000-byte payload limit.

Downgrade drops the trigger, the functions and the table; nothing else
depends on them.
"""

from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GROUPS: Final = ("config", "keys", "client", "user")
CHANNEL: Final = "omejdn_pg_changes"
NOTICES_PER_TRANSACTION: Final = 64
MAX_KEY_BYTES: Final = 1000


def _escape(part: str) -> str:
    """SQL that escapes one key part the way ``cache.encode_key`` does."""
    escaped = part
    for character, escape in (("%", "%25"), ("/", "%2F"), (":", "%3A"), ("*", "%2A")):
        escaped = f"replace({escaped}, '{character}', '{escape}')"
    return escaped


CHANGED_FUNCTION: Final = f"""
CREATE FUNCTION omejdn_pg_changed(change_group text, VARIADIC key_parts text[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $function$
DECLARE
    setting text := 'omejdn_pg.change_' || change_group;
    state text := current_setting(setting, true);
    bumped bigint;
    notices integer := 0;
    key text;
BEGIN
    IF change_group IS NULL OR change_group NOT IN ({", ".join(f"'{g}'" for g in GROUPS)}) THEN
        RAISE EXCEPTION 'omejdn_pg_changed: unknown group %', change_group
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF state IS NULL OR state = '' THEN
        INSERT INTO omejdn_pg_changes AS c (name, counter, changed_at)
        VALUES (change_group, 1, clock_timestamp())
        ON CONFLICT (name) DO UPDATE SET counter = c.counter + 1, changed_at = clock_timestamp()
        RETURNING c.counter INTO bumped;
    ELSE
        bumped := split_part(state, ':', 1)::bigint;
        notices := split_part(state, ':', 2)::integer;
    END IF;
    IF notices < {NOTICES_PER_TRANSACTION} THEN
        IF key_parts IS NOT NULL AND cardinality(key_parts) > 0 THEN
            SELECT string_agg({_escape("part")}, '/' ORDER BY position)
              INTO key FROM unnest(key_parts) WITH ORDINALITY AS parts(part, position);
        END IF;
        IF key IS NULL OR octet_length(key) > {MAX_KEY_BYTES}
           OR notices = {NOTICES_PER_TRANSACTION - 1} THEN
            key := '*';
            notices := {NOTICES_PER_TRANSACTION};
        ELSE
            notices := notices + 1;
        END IF;
        PERFORM pg_notify('{CHANNEL}', change_group || ':' || key || ':' || bumped || ':'
            || floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint);
    END IF;
    PERFORM set_config(setting, bumped || ':' || notices, true);
    RETURN bumped;
END
$function$
"""

KEYS_TRIGGER_FUNCTION: Final = f"""
CREATE FUNCTION omejdn_pg_keys_notify() RETURNS trigger
LANGUAGE plpgsql
AS $function$
DECLARE
    -- now(), not clock_timestamp(): rows of one target in one transaction give
    -- the same payload, which NOTIFY sends once.
    stamp text := floor(extract(epoch FROM now()) * 1000)::bigint::text;
    key text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('{CHANNEL}', 'keys:*::' || stamp);
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        key := {_escape("OLD.target_type")} || '/' || {_escape("OLD.target")};
        IF octet_length(key) > {MAX_KEY_BYTES} THEN key := '*'; END IF;
        PERFORM pg_notify('{CHANNEL}', 'keys:' || key || '::' || stamp);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        key := {_escape("NEW.target_type")} || '/' || {_escape("NEW.target")};
        IF octet_length(key) > {MAX_KEY_BYTES} THEN key := '*'; END IF;
        PERFORM pg_notify('{CHANNEL}', 'keys:' || key || '::' || stamp);
    END IF;
    RETURN NULL;
END
$function$
"""


def _in(column: str, allowed: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in allowed)})"


def upgrade() -> None:
    changes = op.create_table(
        "omejdn_pg_changes",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("counter", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(_in("name", GROUPS), name=op.f("ck_omejdn_pg_changes_name")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_omejdn_pg_changes")),
    )
    op.bulk_insert(changes, [{"name": group} for group in GROUPS])
    op.execute(CHANGED_FUNCTION)
    op.execute(KEYS_TRIGGER_FUNCTION)
    op.execute(
        "CREATE TRIGGER omejdn_pg_keys_changed AFTER INSERT OR UPDATE OR DELETE ON keys "
        "FOR EACH ROW EXECUTE FUNCTION omejdn_pg_keys_notify()"
    )
    op.execute(
        "CREATE TRIGGER omejdn_pg_keys_truncated AFTER TRUNCATE ON keys "
        "FOR EACH STATEMENT EXECUTE FUNCTION omejdn_pg_keys_notify()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER omejdn_pg_keys_truncated ON keys")
    op.execute("DROP TRIGGER omejdn_pg_keys_changed ON keys")
    op.execute("DROP FUNCTION omejdn_pg_keys_notify()")
    op.execute("DROP FUNCTION omejdn_pg_changed(text, text[])")
    op.drop_table("omejdn_pg_changes")

"""Change counters per writing session: writers of a group no longer take turns on one row.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

Until now every write of a group bumped that group's one row of
``omejdn_pg_changes`` and held its lock until COMMIT, so all user writes of a
deployment committed one after another. This revision keeps what the row gave
the read cache — a committed change whose notice got lost is detected by a
poll — without a lock any two writers share:

* ``omejdn_pg_changes`` holds one row per (group, writing session): the
  session is its backend's pid (``writer``), unique among live sessions, and a
  session runs one transaction at a time, so its row's values still rise in
  commit order while no other session ever touches it. ``counter`` comes from
  the sequence ``omejdn_pg_change_seq`` (values stay monotonic per row across
  pruning and pid reuse); ``prior`` is the row's counter before that
  transaction, so every notice names the link it adds to its row's chain and
  a listener that holds a chain with a missing link knows it missed one.
* ``omejdn_pg_changed(group, VARIADIC key)`` and ``omejdn_pg_count(group,
  keys)`` count a transaction once per group and send one notice per new key
  (after 63 keys one whole-group notice). What a transaction has announced is
  kept in its own row (``xact``, ``announced``), which only these SECURITY
  DEFINER functions can write: the server role has SELECT on the table and no
  right on the sequence, so no session can set a counter to the largest
  bigint, and none can pretend to have announced something by a setting.
* ``users``, ``clients`` and ``attributes`` announce exactly the rows they
  changed through statement triggers with transition tables, whoever writes
  (the package, a Ruby Omejdn, hand SQL). That replaces revision 0004's
  whole-group notices and its ``omejdn_pg.self_announcing`` option, which any
  session could set to silence them: a change is now silent only for keys
  this very transaction already announced.
* ``omejdn_pg_changes_prune()`` deletes rows untouched for two hours (twice
  the longest allowed staleness bound), skipping locked ones; listeners call
  it now and then.

The functions run with ``search_path`` pinned to the schema and ``pg_temp``
last, so a caller's temporary table cannot stand in for the counters.

Downgrade restores revisions 0003 and 0004 as they were (their SQL is loaded
from their own scripts); counters restart at zero, which every listener of
that version treats as a reconnect would (it flushes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from omejdn_pg.postgres import migrate

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GROUPS: Final = ("config", "keys", "client", "user")
CHANNEL: Final = "omejdn_pg_changes"
SEQUENCE: Final = "omejdn_pg_change_seq"
NOTICES_PER_TRANSACTION: Final = 64
MAX_KEY_BYTES: Final = 1000
PRUNE_AFTER: Final = "2 hours"
ROW_TABLES: Final = {
    # table: (group expression, key expression, groups of a TRUNCATE)
    "users": ("'user'::text", "username", ("user",)),
    "clients": ("'client'::text", "client_id", ("client",)),
    "attributes": ("type", "identifier", ("user", "client")),
}
EVENTS: Final = {
    "INSERT": ("inserted", "REFERENCING NEW TABLE AS new_rows"),
    "UPDATE": ("updated", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"),
    "DELETE": ("deleted", "REFERENCING OLD TABLE AS old_rows"),
}


def _escape(part: str) -> str:
    """SQL that escapes one key part the way ``cache.encode_key`` does."""
    escaped = part
    for character, escape in (("%", "%25"), ("/", "%2F"), (":", "%3A"), ("*", "%2A")):
        escaped = f"replace({escaped}, '{character}', '{escape}')"
    return escaped


_GROUP_CHECK: Final = f"""
    IF change_group IS NULL OR change_group NOT IN ({", ".join(f"'{g}'" for g in GROUPS)}) THEN
        RAISE EXCEPTION 'omejdn_pg_changed: unknown group %', change_group
            USING ERRCODE = 'invalid_parameter_value';
    END IF;"""

COUNT_FUNCTION: Final = f"""
CREATE FUNCTION omejdn_pg_count(change_group text, changed_keys text[])
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $function$
DECLARE
    me integer := pg_backend_pid();
    tx bigint := pg_current_xact_id()::text::bigint;
    mine omejdn_pg_changes%ROWTYPE;
    fresh text[];
    suffix text;
    key text;
    is_new boolean := false;
    same_transaction boolean := false;
BEGIN{_GROUP_CHECK}
    -- Only this session writes this row (and the pruner, which skips locked rows).
    SELECT * INTO mine FROM omejdn_pg_changes
     WHERE name = change_group AND writer = me FOR UPDATE;
    IF NOT FOUND THEN
        is_new := true;
        mine.name := change_group;
        mine.writer := me;
        mine.prior := NULL;
        mine.counter := nextval('{SEQUENCE}');
        mine.xact := tx;
        mine.announced := '{{}}';
    ELSIF mine.xact <> tx THEN
        mine.prior := mine.counter;
        mine.counter := nextval('{SEQUENCE}');
        mine.xact := tx;
        mine.announced := '{{}}';
    ELSIF mine.announced IS NULL THEN
        RETURN mine.counter;  -- this transaction announced the whole group already
    ELSE
        same_transaction := true;
    END IF;
    IF changed_keys IS NOT NULL THEN
        SELECT coalesce(array_agg(DISTINCT k), '{{}}') INTO fresh
          FROM unnest(changed_keys) AS k WHERE NOT (k = ANY (mine.announced));
        IF same_transaction AND cardinality(fresh) = 0 THEN
            RETURN mine.counter;  -- every one of these keys is announced already
        END IF;
    END IF;
    mine.changed_at := clock_timestamp();
    suffix := ':' || me || '/' || coalesce(mine.prior::text, '') || '/' || mine.counter || ':'
        || floor(extract(epoch FROM mine.changed_at) * 1000)::bigint;
    IF changed_keys IS NULL OR array_position(changed_keys, NULL) IS NOT NULL
       OR cardinality(mine.announced) + cardinality(fresh) >= {NOTICES_PER_TRANSACTION}
       OR EXISTS (SELECT FROM unnest(fresh) AS k WHERE octet_length(k) > {MAX_KEY_BYTES}) THEN
        PERFORM pg_notify('{CHANNEL}', change_group || ':*' || suffix);
        mine.announced := NULL;
    ELSE
        FOREACH key IN ARRAY fresh LOOP
            PERFORM pg_notify('{CHANNEL}', change_group || ':' || key || suffix);
        END LOOP;
        mine.announced := mine.announced || fresh;
    END IF;
    IF is_new THEN
        INSERT INTO omejdn_pg_changes
            (name, writer, counter, prior, xact, announced, changed_at)
        VALUES (mine.name, mine.writer, mine.counter, mine.prior, mine.xact, mine.announced,
                mine.changed_at);
    ELSE
        UPDATE omejdn_pg_changes
           SET counter = mine.counter, prior = mine.prior, xact = mine.xact,
               announced = mine.announced, changed_at = mine.changed_at
         WHERE name = change_group AND writer = me;
    END IF;
    RETURN mine.counter;
END
$function$
"""

CHANGED_FUNCTION: Final = f"""
CREATE FUNCTION omejdn_pg_changed(change_group text, VARIADIC key_parts text[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $function$
DECLARE
    key text;
BEGIN{_GROUP_CHECK}
    IF key_parts IS NOT NULL AND cardinality(key_parts) > 0 THEN
        SELECT string_agg({_escape("part")}, '/' ORDER BY position)
          INTO key FROM unnest(key_parts) WITH ORDINALITY AS parts(part, position);
    END IF;
    IF key IS NULL THEN
        RETURN omejdn_pg_count(change_group, NULL);
    END IF;
    RETURN omejdn_pg_count(change_group, ARRAY[key]);
END
$function$
"""

PRUNE_FUNCTION: Final = f"""
CREATE FUNCTION omejdn_pg_changes_prune() RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $function$
DECLARE
    pruned integer;
BEGIN
    DELETE FROM omejdn_pg_changes WHERE ctid IN (
        SELECT ctid FROM omejdn_pg_changes
         WHERE changed_at < now() - interval '{PRUNE_AFTER}' FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS pruned = ROW_COUNT;
    RETURN pruned;
END
$function$
"""


def _rows_source(group: str, key: str, op_name: str) -> str:
    encoded = _escape(key)
    new = f"SELECT {group} AS g, {encoded} AS k FROM new_rows"
    old = f"SELECT {group} AS g, {encoded} AS k FROM old_rows"
    return {"INSERT": new, "DELETE": old, "UPDATE": f"{new} UNION ALL {old}"}[op_name]


def _rows_function(table: str) -> str:
    """The trigger function of ``table``: count the keys a statement touched, unless this
    transaction announced every one of them already (then it costs one small query: the
    common case of a write's second and later statements)."""
    group, key, _ = ROW_TABLES[table]
    branches = "\n".join(
        f"""    ELSIF TG_OP = '{op_name}' THEN
        FOR change_group, touched IN
            SELECT s.g, s.keys FROM (
                SELECT g, array_agg(k) AS keys FROM ({_rows_source(group, key, op_name)}) r
                 GROUP BY g) s
            LEFT JOIN omejdn_pg_changes c ON c.name = s.g AND c.writer = pg_backend_pid()
             WHERE c.xact IS DISTINCT FROM pg_current_xact_id()::text::bigint
                OR NOT (c.announced IS NULL OR s.keys <@ c.announced)
        LOOP
            PERFORM omejdn_pg_count(change_group, touched);
        END LOOP;"""
        for op_name in EVENTS
    )
    return f"""
CREATE FUNCTION {_function(table)}() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $function$
DECLARE
    change_group text;
    touched text[];
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        FOREACH change_group IN ARRAY TG_ARGV LOOP
            PERFORM omejdn_pg_count(change_group, NULL);
        END LOOP;
{branches}
    END IF;
    RETURN NULL;
END
$function$
"""


def _function(table: str) -> str:
    return f"omejdn_pg_{table}_notify"


def _pin_search_path() -> None:
    """Functions below are created with ``SET search_path FROM CURRENT``: the schema, then
    ``pg_temp`` (a caller's temporary tables must never shadow the counters)."""
    op.execute(
        "SELECT set_config('omejdn_pg.migration_search_path', current_setting('search_path'), "
        "true), set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true)"
    )


def _restore_search_path() -> None:
    op.execute(
        "SELECT set_config('search_path', current_setting('omejdn_pg.migration_search_path'), true)"
    )


def _in(column: str, allowed: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in allowed)})"


def upgrade() -> None:
    for table in ROW_TABLES:
        op.execute(f"DROP TRIGGER omejdn_pg_{table}_changed ON {table}")
    op.execute("DROP FUNCTION omejdn_pg_rows_notify()")
    op.execute("DROP FUNCTION omejdn_pg_changed(text, text[])")
    op.drop_table("omejdn_pg_changes")
    op.execute(f"CREATE SEQUENCE {SEQUENCE} AS bigint")
    op.create_table(
        "omejdn_pg_changes",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("writer", sa.Integer(), nullable=False),
        sa.Column("counter", sa.BigInteger(), nullable=False),
        sa.Column("prior", sa.BigInteger(), nullable=True),
        sa.Column("xact", sa.BigInteger(), nullable=False),
        sa.Column("announced", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(_in("name", GROUPS), name=op.f("ck_omejdn_pg_changes_name")),
        sa.PrimaryKeyConstraint("name", "writer", name=op.f("pk_omejdn_pg_changes")),
    )
    _pin_search_path()
    for function in (COUNT_FUNCTION, CHANGED_FUNCTION, PRUNE_FUNCTION):
        op.execute(function)
    for table in ROW_TABLES:
        op.execute(_rows_function(table))
    _restore_search_path()
    # Only the functions count: nobody else may write the counters or draw from the sequence.
    op.execute("REVOKE ALL ON FUNCTION omejdn_pg_count(text, text[]) FROM PUBLIC")
    for table, (_, _, truncated) in ROW_TABLES.items():
        arguments = ", ".join(f"'{group}'" for group in truncated)
        for op_name, (suffix, referencing) in EVENTS.items():
            op.execute(
                f"CREATE TRIGGER omejdn_pg_{table}_{suffix} AFTER {op_name} ON {table} "
                f"{referencing} FOR EACH STATEMENT EXECUTE FUNCTION {_function(table)}()"
            )
        op.execute(
            f"CREATE TRIGGER omejdn_pg_{table}_truncated AFTER TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {_function(table)}({arguments})"
        )


def downgrade() -> None:
    for table in ROW_TABLES:
        for suffix, _ in (*EVENTS.values(), ("truncated", "")):
            op.execute(f"DROP TRIGGER omejdn_pg_{table}_{suffix} ON {table}")
        op.execute(f"DROP FUNCTION {_function(table)}()")
    op.execute("DROP FUNCTION omejdn_pg_changes_prune()")
    op.execute("DROP FUNCTION omejdn_pg_changed(text, text[])")
    op.execute("DROP FUNCTION omejdn_pg_count(text, text[])")
    op.drop_table("omejdn_pg_changes")
    op.execute(f"DROP SEQUENCE {SEQUENCE}")
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
    op.execute(migrate.earlier_script(__file__, "0003_change_counter.py").CHANGED_FUNCTION)
    announce = migrate.earlier_script(__file__, "0004_announce_every_writer.py")
    op.execute(announce.ROWS_TRIGGER_FUNCTION)
    for table, groups in announce.ANNOUNCED_TABLES.items():
        arguments = ", ".join(f"'{group}'" for group in groups)
        op.execute(
            f"CREATE TRIGGER omejdn_pg_{table}_changed AFTER INSERT OR UPDATE OR DELETE OR "
            f"TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION "
            f"omejdn_pg_rows_notify({arguments})"
        )

"""Changes to users, clients and attributes are announced whoever writes them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

The read cache hears of this package's writes through ``omejdn_pg_changed()``
(revision 0003), which every write calls with the exact keys it changed. A
writer that does not — a Ruby Omejdn sharing the database, a script, hand SQL
in psql — would leave a cached user or client stale for as long as it stays
cached. Key rows already announce themselves (a trigger since 0003); this
revision does the same for ``users``, ``clients`` and ``attributes``:

* one statement-level trigger per table (after INSERT, UPDATE, DELETE or
  TRUNCATE) sends a whole-group notice (``user:*`` and/or ``client:*``; the
  rows themselves are not looked at, so a bulk statement costs one call, and
  PostgreSQL sends identical notices of one transaction once, at commit);
* the package's own connections carry the startup option
  ``omejdn_pg.self_announcing=on`` (they announce exactly what they changed),
  and the trigger stays silent for them, so a USER_UPDATE still drops one
  user's entry, not every user's. Where that option cannot arrive (PgBouncer
  with ``ignore_startup_parameters = options``) the package's writes also
  flush their group: more misses, never a stale answer;
* like the keys trigger it bumps no counter and takes no lock, so it adds no
  contention; a listener that was away when the notice came flushes on
  reconnect anyway.

Downgrade drops the triggers and their function.
"""

from collections.abc import Sequence
from typing import Final

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL: Final = "omejdn_pg_changes"
SELF_ANNOUNCING: Final = "omejdn_pg.self_announcing"
ANNOUNCED_TABLES: Final = {
    "users": ("user",),
    "clients": ("client",),
    "attributes": ("user", "client"),
}

ROWS_TRIGGER_FUNCTION: Final = f"""
CREATE FUNCTION omejdn_pg_rows_notify() RETURNS trigger
LANGUAGE plpgsql
AS $function$
DECLARE
    -- now(), not clock_timestamp(): every statement of one transaction sends
    -- the same payload, which NOTIFY delivers once.
    stamp text := floor(extract(epoch FROM now()) * 1000)::bigint::text;
    change_group text;
BEGIN
    IF current_setting('{SELF_ANNOUNCING}', true) = 'on' THEN
        RETURN NULL;
    END IF;
    FOREACH change_group IN ARRAY TG_ARGV LOOP
        PERFORM pg_notify('{CHANNEL}', change_group || ':*::' || stamp);
    END LOOP;
    RETURN NULL;
END
$function$
"""


def _trigger(table: str) -> str:
    return f"omejdn_pg_{table}_changed"


def upgrade() -> None:
    op.execute(ROWS_TRIGGER_FUNCTION)
    for table, groups in ANNOUNCED_TABLES.items():
        arguments = ", ".join(f"'{group}'" for group in groups)
        op.execute(
            f"CREATE TRIGGER {_trigger(table)} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION omejdn_pg_rows_notify({arguments})"
        )


def downgrade() -> None:
    for table in ANNOUNCED_TABLES:
        op.execute(f"DROP TRIGGER {_trigger(table)} ON {table}")
    op.execute("DROP FUNCTION omejdn_pg_rows_notify()")

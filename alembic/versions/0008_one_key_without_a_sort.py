"""A change of one key is announced without sorting: the backend's heap stays put.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

``omejdn_pg_count`` (0005) removed the keys a transaction had announced
already with ``array_agg(DISTINCT k)``: a sort, whose memory each call takes
and gives back. Once a session's backend had handled a larger value (a key
set's rows, a configuration section), glibc kept moving the top of its heap
for that sort: four ``brk`` calls per announcement (strace), and the function
took 68 -> 91 us a call (``pg_stat_statements``, nested) until the session's
cached plans were discarded, about 5% of a user's update. Nearly every
announcement names one key (a user, a client, a section, a key set), so that
case is now one comparison; several keys are deduplicated as before. Only the
function body changes; downgrade puts 0005's back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from alembic import op
from omejdn_pg.postgres import migrate

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SORTED: Final = """\
        SELECT coalesce(array_agg(DISTINCT k), '{}') INTO fresh
          FROM unnest(changed_keys) AS k WHERE NOT (k = ANY (mine.announced));"""

_ONE_KEY_FIRST: Final = """\
        IF cardinality(changed_keys) = 1 THEN
            -- One key, nearly always: no sort (a NULL key counts as announced, as below).
            fresh := CASE WHEN changed_keys[1] IS NULL OR changed_keys[1] = ANY (mine.announced)
                          THEN '{}'::text[] ELSE changed_keys END;
        ELSE
            SELECT coalesce(array_agg(DISTINCT k), '{}') INTO fresh
              FROM unnest(changed_keys) AS k WHERE NOT (k = ANY (mine.announced));
        END IF;"""


def upgrade() -> None:
    _create_count_function(one_key_first=True)


def downgrade() -> None:
    _create_count_function(one_key_first=False)


def _create_count_function(*, one_key_first: bool) -> None:
    writers = migrate.earlier_script(__file__, "0005_writers_never_queue.py")
    body: str = writers.COUNT_FUNCTION
    if _SORTED not in body:
        raise RuntimeError("omejdn_pg_count: 0005's body no longer holds the sorted statement")
    if one_key_first:
        body = body.replace(_SORTED, _ONE_KEY_FIRST)
    # Same SET search_path FROM CURRENT as 0005 (the schema, then pg_temp); the
    # owner, SECURITY DEFINER and the revoked EXECUTE stay as they were.
    writers._pin_search_path()
    op.execute(body.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    writers._restore_search_path()

"""Key sets: several keys per target, each with its descriptor and lifecycle.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Omejdn's current core stores keys as JWK Sets: a target (the token signer,
a client) holds several keys, each with a descriptor (``kid``, ``use``,
``alg``, any other JWK parameter). ``keys`` gains what that needs, as columns
with defaults so that the Ruby plugin's ``INSERT (target_type, target, type,
value)`` keeps working:

* ``kid`` — part of the primary key, so keys of one target are told apart;
  ``''`` marks a row written by the Ruby plugin, whose kid is the RFC 7638
  thumbprint of its key;
* ``params`` — the JWK descriptor minus the key itself and its chain;
* ``state`` (``next``/``active``/``retired``), ``position`` (order in the
  set) and the lifecycle dates ``created_at``, ``activate_at``, ``retired_at``,
  ``destroy_at``.

The Ruby plugin reads every row of a target and keeps the ``sk`` and ``certs``
rows, so exactly one key of a target — the first of the set, the one that
signs — keeps those two types; every further key is stored as ``extra_sk`` /
``extra_certs``, rows the Ruby plugin does not look at. A target with one key
is therefore the same two rows as before.

Downgrade restores the one-key-per-target table. It refuses, naming the
targets, while any target holds more than one key: dropping keys that may be
published for verification is not something a schema downgrade should do
silently.
"""

from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from omejdn_pg.errors import MigrationError

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_TYPES: Final = ("sk", "certs")
NEW_TYPES: Final = ("sk", "certs", "extra_sk", "extra_certs")
STATES: Final = ("next", "active", "retired")
MAX_PROBLEMS: Final = 50


def _in(column: str, allowed: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in allowed)})"


def upgrade() -> None:
    op.add_column("keys", sa.Column("kid", sa.Text(), server_default="", nullable=False))
    op.add_column(
        "keys",
        sa.Column(
            "params", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
    )
    op.add_column("keys", sa.Column("state", sa.Text(), server_default="active", nullable=False))
    op.add_column("keys", sa.Column("position", sa.Integer(), server_default="0", nullable=False))
    op.add_column(
        "keys",
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    for column in ("activate_at", "retired_at", "destroy_at"):
        op.add_column("keys", sa.Column(column, sa.DateTime(timezone=True), nullable=True))
    op.drop_constraint(op.f("pk_keys"), "keys", type_="primary")
    op.create_primary_key(op.f("pk_keys"), "keys", ["target_type", "target", "kid", "type"])
    op.drop_constraint(op.f("ck_keys_type"), "keys", type_="check")
    op.create_check_constraint(op.f("ck_keys_type"), "keys", _in("type", NEW_TYPES))
    op.create_check_constraint(op.f("ck_keys_state"), "keys", _in("state", STATES))


def downgrade() -> None:
    conn = op.get_bind()
    crowded = conn.execute(
        sa.text(
            "SELECT target_type, target, count(DISTINCT kid) FROM keys "
            "GROUP BY target_type, target HAVING count(DISTINCT kid) > 1 "
            "OR bool_or(type LIKE 'extra_%') "
            f'ORDER BY target_type COLLATE "C", target COLLATE "C" LIMIT {MAX_PROBLEMS + 1}'
        )
    ).all()
    if crowded:
        listed = "; ".join(f"keys {t}/{n}: {count} keys" for t, n, count in crowded[:MAX_PROBLEMS])
        more = " (and more)" if len(crowded) > MAX_PROBLEMS else ""
        raise MigrationError(
            "cannot downgrade to 0001, which holds one key per target: "
            f"{listed}{more}; delete the extra keys first (`omejdn-pg keys delete`)"
        )
    op.drop_constraint(op.f("ck_keys_state"), "keys", type_="check")
    op.drop_constraint(op.f("ck_keys_type"), "keys", type_="check")
    op.create_check_constraint(op.f("ck_keys_type"), "keys", _in("type", OLD_TYPES))
    op.drop_constraint(op.f("pk_keys"), "keys", type_="primary")
    op.create_primary_key(op.f("pk_keys"), "keys", ["target_type", "target", "type"])
    for column in (
        "destroy_at",
        "retired_at",
        "activate_at",
        "created_at",
        "position",
        "state",
        "params",
        "kid",
    ):
        op.drop_column("keys", column)

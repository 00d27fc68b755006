"""Statements compiled once for the driver: what they bind is what SQLAlchemy would bind."""

from __future__ import annotations

import pytest
from psycopg.types.json import Json, Jsonb
from sqlalchemy import Text, bindparam, column, select, table
from sqlalchemy.dialects.postgresql import JSON, JSONB

from omejdn_pg.postgres.database.readpool import CompiledRead

documents = table("documents", column("name", Text), column("body", JSONB))


def test_a_json_document_is_bound_as_the_driver_takes_it() -> None:
    statement = select(bindparam("doc", type_=JSON), documents.c.name).where(
        documents.c.body == bindparam("body", type_=JSONB)
    )
    compiled = CompiledRead(statement)
    values = compiled.values({"doc": {"b": 1, "a": [2]}, "body": {"k": None}})
    assert isinstance(values["doc"], Json)
    assert values["doc"].obj == {"b": 1, "a": [2]}
    assert isinstance(values["body"], Jsonb)
    assert values["body"].obj == {"k": None}
    assert "%(doc)s::JSON" in compiled.sql


def test_plain_values_pass_as_they_are() -> None:
    compiled = CompiledRead(select(documents.c.body).where(documents.c.name == bindparam("name")))
    assert compiled.values({"name": "alice"}) == {"name": "alice"}


def test_a_missing_value_is_named() -> None:
    compiled = CompiledRead(select(documents.c.body).where(documents.c.name == bindparam("name")))
    with pytest.raises(TypeError, match="no value for name"):
        compiled.values({})


def test_an_expanding_in_list_is_refused_since_its_sql_depends_on_its_values() -> None:
    with pytest.raises(TypeError, match="expanding IN list"):
        CompiledRead(select(documents.c.body).where(documents.c.name.in_(["a", "b"])))

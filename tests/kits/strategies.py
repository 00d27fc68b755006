"""Hypothesis strategies for JSON values and names, and the settings property tests run
with (fewer examples than the default: each one may cost a database round trip)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

NO_NUL = st.characters(codec="utf-8", exclude_characters="\x00")  # no lone surrogates
texts = st.text(NO_NUL, max_size=30)
large_texts = st.builds(
    lambda s, n: s * n, st.text(NO_NUL, min_size=1, max_size=8), st.integers(500, 5000)
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
    | large_texts
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=30,
)
names = st.text(NO_NUL, min_size=1, max_size=40)


def same_json(value: Any) -> Any:
    """``value`` with numbers compared by value: jsonb keeps numbers as decimals
    and prints integral ones without a fraction (1e16 comes back as 10**16)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if isinstance(value, list):
        return [same_json(v) for v in value]
    return {k: same_json(v) for k, v in value.items()}


PROPERTY_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

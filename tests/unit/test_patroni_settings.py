"""``topology:``, the Patroni REST endpoints the replicas are found from: what is refused, and how.

No server needed: these are the configuration's checks. What the setting does
on a real cluster is ``tests/cluster/test_patroni_topology.py``.
"""

from __future__ import annotations

import datetime

import pytest

from omejdn_pg.errors import ConfigurationError
from omejdn_pg.settings.backend import TopologySettings
from omejdn_pg.settings.validation import parse_backend_section

WHERE = "plugins.yml: plugins.postgres_backend"


def test_a_list_of_endpoints_with_a_refresh_is_taken() -> None:
    settings = parse_backend_section(
        {"topology": {"patroni": ["http://db1:8008/", " https://db2:8008"], "refresh": "500ms"}},
        "plugins.yml",
    )
    assert settings.topology == TopologySettings(
        ("http://db1:8008", "https://db2:8008"), refresh=datetime.timedelta(milliseconds=500)
    )
    assert parse_backend_section({}, "plugins.yml").topology is None


@pytest.mark.parametrize(
    ("topology", "message"),
    [
        ("http://db1:8008", f"{WHERE}.topology must be a mapping"),
        ({"patroni": []}, f"{WHERE}.topology.patroni must be a non-empty list"),
        ({"patroni": "http://db1:8008"}, f"{WHERE}.topology.patroni must be a non-empty list"),
        ({"patroni": [8008]}, f"{WHERE}.topology.patroni[0] must be a URL"),
        ({"patroni": ["db1:8008"]}, "is not an http(s) URL with a host"),
        ({"patroni": ["ftp://db1"]}, "is not an http(s) URL with a host"),
        ({"patroni": ["http://db1:8008/?x=1"]}, "must be a base URL"),
        ({"patroni": ["http://db1:8008"], "refresh": 0}, "refresh must be more than 0"),
        ({"patroni": ["http://db1:8008"], "refresh": "soon"}, "refresh: 'soon' is not a duration"),
        ({"patroni": ["http://db1:8008"], "every": "2s"}, "unknown key(s) 'every'"),
    ],
)
def test_a_wrong_topology_is_refused_by_name(topology: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_backend_section({"topology": topology}, "plugins.yml")
    assert message in str(raised.value)


def test_credentials_in_an_endpoint_are_refused_without_being_shown() -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_backend_section(
            {"topology": {"patroni": ["http://admin:supersecret@db1:8008"]}}, "plugins.yml"
        )
    assert "must not carry credentials" in str(raised.value)
    assert "supersecret" not in str(raised.value)


def test_replicas_and_topology_are_one_or_the_other() -> None:
    with pytest.raises(ConfigurationError, match="'replicas' and 'topology' both list"):
        parse_backend_section(
            {"replicas": [{"host": "db2"}], "topology": {"patroni": ["http://db1:8008"]}},
            "plugins.yml",
        )


def test_a_replica_beside_a_multi_host_connection_must_name_its_host() -> None:
    section = {
        "connection": {"host": "db1,db2", "password": "s3cret"},
        "replicas": [{"port": 5433}],
    }
    with pytest.raises(ConfigurationError) as caught:
        parse_backend_section(section, "plugins.yml")
    assert str(caught.value) == (
        f"{WHERE}: replicas[0] must name its host: the connection's host is a list"
    )

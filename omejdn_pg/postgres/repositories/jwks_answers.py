"""KEYS_LOAD and KEYSLOAD_ALL_KEYS answers as JWK Sets, converted once per stored content."""

from __future__ import annotations

import marshal
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from omejdn_pg.json_values import check_text
from omejdn_pg.keys.model import Key
from omejdn_pg.postgres.repositories.common import Reader
from omejdn_pg.postgres.repositories.key_mapping import keys_from_rows
from omejdn_pg.postgres.repositories.key_reads import LOAD_ALL_KEYS, LOAD_KEYS, check_target
from omejdn_pg.sealing import Keyring


def public_jwks(keys: Iterable[Key]) -> dict[str, Any]:
    """A JWK Set of ``keys`` with no private member."""
    return {"keys": [key.to_jwk(private=False) for key in keys]}


def signing_jwks(keys: Iterable[Key]) -> dict[str, Any]:
    """KEYS_LOAD's answer: active keys with their private members, the others without."""
    return {"keys": [key.to_jwk(private=key.state == "active") for key in keys]}


class JwksAnswers:
    """KEYS_LOAD and KEYSLOAD_ALL_KEYS answers, converted once per stored content.

    A token request loads the signing keys, and turning their rows into a JWK
    Set (parse the PEM, check the key against its certificate, encode every
    RSA number in base64url) costs a third of the read. The rows are still
    read every time, so a changed key is seen at once; only when a target's
    rows are exactly what they were last time is the answer computed then
    reused, as a fresh copy each time (``marshal``: a caller may mutate it).
    One entry per target, the most recent content only; an answer is reused
    only with the keyring it was opened with.
    """

    def __init__(self, max_targets: int = 1024) -> None:
        self._max_targets = max_targets
        self._answers: dict[tuple[str, ...], tuple[object, Sequence[Any], bytes]] = {}

    def signing(
        self, reader: Reader, target_type: str, target: str, keyring: Keyring | None = None
    ) -> dict[str, Any] | None:
        """The target's set with the active keys' private members; None if it has no key."""
        target_type, target = check_target(target_type, target)
        rows = reader.rows(LOAD_KEYS, {"target_type": target_type, "target": target})
        if not rows:
            return None

        def convert() -> dict[str, Any] | None:
            keys = keys_from_rows(target_type, target, rows, keyring)
            return signing_jwks(keys) if keys else None

        answer: dict[str, Any] | None = self._answer(
            (target_type, target), keyring, list(rows), convert
        )
        return answer

    def public(
        self, reader: Reader, target_type: str, keyring: Keyring | None = None
    ) -> dict[str, Any]:
        """Every key of ``target_type``, next and retired ones included, without private members."""
        target_type = check_text(target_type, "target_type")
        rows = reader.rows(LOAD_ALL_KEYS, {"target_type": target_type})

        def convert() -> dict[str, Any]:
            grouped: dict[str, list[Any]] = {}
            for row in rows:
                grouped.setdefault(row.target, []).append(row)
            return public_jwks(
                key
                for target, owned in grouped.items()
                for key in keys_from_rows(target_type, target, owned, keyring)
            )

        answer: dict[str, Any] = self._answer((target_type,), keyring, list(rows), convert)
        return answer

    def client(
        self,
        client_id: str,
        key_rows: str,
        keyring: Keyring | None,
        convert: Callable[[], dict[str, Any] | None],
    ) -> dict[str, Any] | None:
        """A client's public JWK Set (its ``jwks`` metadata) from its key rows as read, one
        JSON text, compared as it is: nothing is parsed while they stay the same.

        The listing reads every client's keys; a token request for a client that
        authenticates with ``private_key_jwt`` reads its one client. A None from
        ``convert`` (rows Python cannot read) is not kept, so that every read names them.
        """
        answer: dict[str, Any] | None = self._answer(
            ("client", client_id), keyring, key_rows, convert, keep_none=False
        )
        return answer

    def _answer(
        self,
        target: tuple[str, ...],
        keyring: Keyring | None,
        content: Sequence[Any],
        convert: Callable[[], Any],
        *,
        keep_none: bool = True,
    ) -> Any:
        # The rows hold every column the answer is computed from, and nothing
        # changes them afterwards (params, a dict, is copied before use).
        found = self._answers.get(target)
        if found is not None and found[0] is keyring and found[1] == content:
            return marshal.loads(found[2])  # noqa: S302 - bytes this process made
        answer = convert()
        if answer is None and not keep_none:
            return None
        if len(self._answers) >= self._max_targets:
            self._answers.clear()
        self._answers[target] = (keyring, content, marshal.dumps(answer))
        return answer

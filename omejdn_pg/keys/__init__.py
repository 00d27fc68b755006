"""Keys and key sets: the vocabulary of KEYS_STORE / KEYS_LOAD, free of SQL and events.

One module a responsibility: :mod:`~omejdn_pg.keys.algorithms` (the kinds of
key and algorithm, the size bounds), :mod:`~omejdn_pg.keys.states` (the
lifecycle states), :mod:`~omejdn_pg.keys.pem` (the stored form, with its size
guard), :mod:`~omejdn_pg.keys.jwk` (the JWK codec),
:mod:`~omejdn_pg.keys.invariants` (what holds of every key),
:mod:`~omejdn_pg.keys.model` (:class:`Key`), :mod:`~omejdn_pg.keys.key_set`
(:class:`KeySet`) and :mod:`~omejdn_pg.keys.material` (the older one-key
:class:`KeyMaterial`). The package code imports each name from the module
that defines it; the names below are re-exported lazily for code outside the
package, so that importing this package loads no ``cryptography``.
"""

from typing import TYPE_CHECKING

from omejdn_pg.lazy import lazy_names

if TYPE_CHECKING:
    from omejdn_pg.keys.algorithms import MAX_RSA_BITS as MAX_RSA_BITS
    from omejdn_pg.keys.algorithms import SUPPORTED_ALGS as SUPPORTED_ALGS
    from omejdn_pg.keys.algorithms import PrivateKey as PrivateKey
    from omejdn_pg.keys.algorithms import PublicKey as PublicKey
    from omejdn_pg.keys.algorithms import weak_key_problem as weak_key_problem
    from omejdn_pg.keys.jwk import jwk_thumbprint as jwk_thumbprint
    from omejdn_pg.keys.key_set import KeySet as KeySet
    from omejdn_pg.keys.material import KeyMaterial as KeyMaterial
    from omejdn_pg.keys.model import Key as Key
    from omejdn_pg.keys.model import generate_key as generate_key
    from omejdn_pg.keys.pem import CHAIN_SEPARATOR as CHAIN_SEPARATOR
    from omejdn_pg.keys.pem import load_certificate_chain as load_certificate_chain
    from omejdn_pg.keys.pem import load_key_pem as load_key_pem
    from omejdn_pg.keys.states import KEY_STATES as KEY_STATES
    from omejdn_pg.keys.states import KeyState as KeyState

PUBLIC = {
    "MAX_RSA_BITS": "omejdn_pg.keys.algorithms",
    "SUPPORTED_ALGS": "omejdn_pg.keys.algorithms",
    "PrivateKey": "omejdn_pg.keys.algorithms",
    "PublicKey": "omejdn_pg.keys.algorithms",
    "weak_key_problem": "omejdn_pg.keys.algorithms",
    "jwk_thumbprint": "omejdn_pg.keys.jwk",
    "KeySet": "omejdn_pg.keys.key_set",
    "KeyMaterial": "omejdn_pg.keys.material",
    "Key": "omejdn_pg.keys.model",
    "generate_key": "omejdn_pg.keys.model",
    "CHAIN_SEPARATOR": "omejdn_pg.keys.pem",
    "load_certificate_chain": "omejdn_pg.keys.pem",
    "load_key_pem": "omejdn_pg.keys.pem",
    "KEY_STATES": "omejdn_pg.keys.states",
    "KeyState": "omejdn_pg.keys.states",
}
"""The public surface: name -> the module that defines it."""


__getattr__, __dir__ = lazy_names(globals(), PUBLIC)

__all__ = sorted(PUBLIC)

"""The service layer: the Host, and the operations that compose the host and the backend.

The CLI and the bridge parse, call one function here and print (or answer)
its report; the functions here own the transaction and the files they write,
and know nothing of click or of terminals. :mod:`.host` is what Omejdn's core
calls; :mod:`.transfer` imports and exports a deployment directory;
:mod:`.backup` and :mod:`.restore` carry the whole store; :mod:`.listing`
streams users and clients. This is the only layer that composes Omejdn's side
(:mod:`omejdn_pg.host`) and the backend (:mod:`omejdn_pg.postgres`). Below it
are the operator surface (:mod:`omejdn_pg.postgres.admin`) and the
repositories (:mod:`omejdn_pg.postgres.repositories`), which own neither.
"""

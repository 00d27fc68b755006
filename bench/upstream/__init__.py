"""Upstream Omejdn on omejdn_pg: its own test suite, and its token endpoint under load.

Needs two checkouts outside this repository, given by path: Omejdn's server
(Fraunhofer-AISEC/omejdn-server, 3126324) and ruby-jwt (v2.7.0; Debian's 2.5.0
lacks ``JWT::JWK::Set``), plus Debian's Ruby gems Omejdn loads. Nothing of them
is copied here: every run works on a scratch copy of the Omejdn checkout, into
which it writes our plugin (``omejdn-pg bridge install``), a plugin file, and —
for the suite — a test set-up of our own in place of ``tests/config_testsetup.rb``
(upstream's registers an in-memory store for configuration and keys and writes
users and clients behind the core's back; ours seeds through the core's own
``Client.add_client`` / ``User.add_user`` / ``Config`` calls, so every write
reaches the service).

``python -m bench.upstream suite --omejdn DIR --jwt DIR`` runs the suite;
``python -m bench.upstream tokens ...`` measures token requests per second on
Omejdn's file storage and on omejdn_pg; ``python -m bench.upstream events ...``
times each storage event as Omejdn's core fires it, from Ruby. Each skips with
its reason (exit status 0, one line) when a checkout is missing.
"""

"""The read cache: point reads served from process memory, invalidated through PostgreSQL.

An identity server reads its configuration, signing keys and clients on every
token request, and they change a few times a day. The cache keeps the answers
of CONFIGURATION_LOAD (per section), KEYS_LOAD (per target), KEYS_LOAD_ALL
(per target type) and, when switched on, CLIENT_GET and USER_GET, and hands
out copies. Its one promise is a bound, not a hope:

    a change whose commit returned to its writer at time T is served by no
    cache of any process from T + ``max_staleness`` on — and by the writing
    process not even once after the write returned.

How that holds, using nothing but PostgreSQL:

* Every committed change is counted and announced in its own transaction.
  ``users``, ``clients`` and ``attributes`` do it themselves: statement
  triggers with transition tables call ``omejdn_pg_count`` with exactly the
  usernames and client_ids a statement touched, whoever writes (this package,
  a Ruby Omejdn sharing the database, hand SQL). Configuration sections and
  key sets are announced by the package's writes (:func:`~.changes.publish_change`,
  ``omejdn_pg_changed``), and key rows also by their own trigger. A count
  sends ``NOTIFY omejdn_pg_changes, '<group>:<key>:<writer>/<prior>/<counter>:<ms>'``,
  delivered only if the transaction commits. The writing process drops its
  own affected entries before the write returns (read-your-writes).
* The counters live on one row per (group, writing session) — the session's
  backend pid — and take their values from a sequence (revision 0005). A
  session runs one transaction at a time and no other session touches its
  row, so each row rises in commit order, and every notice names the link it
  adds to its row's chain (``prior`` → ``counter``). Writers of a group share
  no lock: one writer holding its transaction open delays nobody, and
  concurrent commits can share a WAL flush.
* Each cache has one listener thread with its own psycopg connection (not
  the pool's: it must stay in LISTEN, on the primary, outside PgBouncer's
  transaction pooling). It drops the entries each notice names. On every
  (re)connect it first LISTENs, then flushes everything, then polls the
  counter rows: nothing committed while it was away survives.
* Every ``max_staleness / 2`` the listener polls the counter rows (one small
  SELECT, its heartbeat). A row whose value the links heard since the last
  poll do not reach, or a notice whose ``prior`` its row's chain does not
  reach, means a counted change came without its notice: that group is
  flushed (:class:`~.changes.Chains`). The same poll proves the connection alive.
* An entry is served only while the last successful heartbeat was *sent*
  less than ``max_staleness`` ago. Everything committed before that send is
  reflected by then (its notice was handled or its group flushed), which is
  the bound above. A listener that cannot reach the server, or a stalled one,
  therefore makes the cache step aside within ``max_staleness``: reads go to
  the database and nothing read meanwhile is kept, until it is back, has
  flushed and has polled. Two polls further apart than the bound flush
  everything, which is what lets listeners prune rows idle for two hours
  (twice the largest bound) without any listener missing their last value.
* Key sets are also written outside the adapters (the key lifecycle of the
  service layer's Host). The trigger announces those to every process; the writing
  process learns of them synchronously from its own engine — a transaction
  that wrote ``keys`` drops this process's key entries when its connection
  goes back to the pool, after the commit and before the write returns.
* A miss fills the cache only if no invalidation ran while it read (an
  epoch compare) and only from an AUTOCOMMIT read, never from inside a batch
  or snapshot, whose view may never commit.

Why per-session rows and not the alternatives. One row per group made every
writer of the deployment wait for the previous one's commit; rows per key grow
with the data, fixed shards still collide, and a sequence or commit-LSN
watermark cannot tell a rolled-back number from a lost notice without a change
log every poll rereads (the whole argument is :mod:`.changes`' docstring).

Where each part lives: the writer's side of the protocol and the chains a
listener checks are :mod:`.changes`; the listener thread is :mod:`.listener`;
the engine-event watch of this process's key writes is :mod:`.watch`; the
entries, their bound and their fills are :class:`~.read_cache.ReadCache`
(:mod:`.read_cache`), which entries a change alters is :mod:`.entries`, how a
hit is copied is :mod:`.copies`, and the counters a metrics exporter reads are
:mod:`.stats`.

What it cannot see: a writer that bypasses this package and changes a
configuration section (a table of its own, made at run time, with no trigger)
without calling ``omejdn_pg_changed``; such a writer must call it in its
transaction, or ``config`` must stay uncached.
"""

"""How the backend meets PostgreSQL: engine, unit of work, errors, failover and replicas.

* :mod:`.engine` builds the engine from libpq keywords and probes for a pooler;
  :mod:`.startup` carries session settings at startup, or per transaction
  where a pooler refuses them.
* :mod:`.unit_of_work` is :class:`~.unit_of_work.Database`: reads outside any
  transaction, writes in one, batches and snapshots, and what is retried when.
* :mod:`.readpool` is the primary's (and each standby's) direct read path.
* :mod:`.failover` keeps pooled connections off a fenced node and lets reads
  wait for a new primary; :mod:`.replicas` routes reads to standbys that
  have this process's writes.
* :mod:`.errors` translates driver errors into the package's own, once.
"""

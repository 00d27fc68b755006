"""omejdn_pg's benchmarks: every storage event next to the fastest the database allows.

``python -m bench`` (from the repository root) seeds a database, then measures
each storage event as Omejdn's core fires it (``loader.fire``) beside its
*floor*: raw psycopg on one persistent connection sending the same SQL the
package sent for that event (captured from the engine at run time, so the floor
follows the code), prepared, returning the same rows. Both run in the same
process, interleaved in blocks, so the noise of a shared machine hits both
alike; the figure that means something is the ratio, not the microseconds.

The shape is that of SQLAlchemy's ``examples/performance/``: one small function
per case (:mod:`bench.cases`), a runner that times them side by side
(:mod:`bench.timing`), and a report (:mod:`bench.report`, :mod:`bench.plot`).
The rest is set-up: the server (:mod:`bench.server`), the data
(:mod:`bench.seed`), the floor (:mod:`bench.floor`), the import command
(:mod:`bench.importing`), the growth series (:mod:`bench.growth`) and a
profile of the point reads (:mod:`bench.profiling`); two rows time commands as an
operator runs them: ``users list`` in each output format (:mod:`bench.output_formats`)
and an import of plaintext passwords by hashing workers (:mod:`bench.plaintext_import`).
"""

RESULTS_SCHEMA = 1
"""Version of the JSON layout under ``bench/results/``."""

"""Operations that compose the host and the PostgreSQL backend: what a command runs.

The CLI parses arguments, calls one function here and prints its report;
the functions here own the transaction and the files they write, and know
nothing of click or of terminals. Below them are the repositories
(:mod:`omejdn_pg.postgres.repositories`), which own neither.
"""

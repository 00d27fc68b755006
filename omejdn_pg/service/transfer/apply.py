"""Applying an import: its plan, then every change inside one ``host.batch()`` transaction.

So an import is all or nothing, a second run has nothing to do, and
``dry_run`` stops after the plan. The plan is made before that transaction
opens, so hashing plaintext passwords holds no connection; what another
writer stores in between makes the batch fail whole, and the import plans
again (at most :data:`MAX_IMPORT_ATTEMPTS` times). The trade-off: the plan
holds the whole directory in memory, which is fine for the tens of thousands
of users Omejdn's YAML files can hold at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from omejdn_pg import collector
from omejdn_pg.errors import AlreadyExists, NotFound
from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.service.host import Host
from omejdn_pg.service.transfer.deployment import read_deployment
from omejdn_pg.service.transfer.plan import plan_import
from omejdn_pg.service.transfer.report import Change, Progress, Report

MAX_IMPORT_ATTEMPTS: Final = 3
"""Plans tried when concurrent writers keep changing what an import is about to write."""


def import_deployment(
    path: Path,
    host: Host,
    *,
    dry_run: bool = False,
    policy: PasswordPolicy | None = None,
    on_plan: Callable[[list[Change]], None] | None = None,
    progress: Progress | None = None,
) -> Report:
    """Make the store hold the deployment at ``path``, in one transaction.

    ``on_plan`` sees the plan before anything is written (e.g. to size a
    progress bar); ``progress`` is called after each change is applied.
    """
    # The whole directory is held until the end: see omejdn_pg.collector.
    with collector.paused():
        started = time.perf_counter()
        deployment = read_deployment(path)
        report = Report(dry_run=dry_run, notes=list(deployment.notes))
        # Plan outside the transaction: hashing and verifying plaintext passwords (bcrypt,
        # a quarter second each) must not hold a transaction and a pooled connection.
        for attempt in range(1, MAX_IMPORT_ATTEMPTS + 1):
            report.changes = plan_import(deployment, host, policy)
            if on_plan is not None:
                on_plan(report.changed)
            if dry_run or not report.changed:
                break
            try:
                with host.batch():
                    for change in report.changed:
                        assert change.apply is not None
                        change.apply(host)
                        if progress is not None:
                            progress(change)
                break
            except (AlreadyExists, NotFound):
                # Someone stored a change between the plan and the batch (another
                # import of an overlapping directory, say): the batch rolled back
                # whole, so plan again against what is stored now.
                if attempt == MAX_IMPORT_ATTEMPTS:
                    raise
        report.seconds = time.perf_counter() - started
        return report

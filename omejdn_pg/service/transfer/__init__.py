"""Import an Omejdn deployment directory into the store, and export the store as one.

A deployment directory is Omejdn's file layout (``config/*.yml``, ``keys/``).
Import is a plan, then its execution: :mod:`.deployment` reads and checks
every file, :mod:`.plan` (with :mod:`.users` and :mod:`.compare`) keeps only
what differs from the store, each difference with the storage event that
writes it through the Host, and :mod:`.apply` runs them in one transaction.
Export (:mod:`.export`) reads the store from one snapshot and writes a staged
directory that :mod:`.swap` moves into place whole. :mod:`.report` holds what
both return. The click commands over this are
:mod:`omejdn_pg.cli.transfer_commands`; nothing here knows of click or of a
terminal beyond a progress line on stderr.
"""

from omejdn_pg.service.transfer.apply import MAX_IMPORT_ATTEMPTS, import_deployment
from omejdn_pg.service.transfer.compare import keys_differ
from omejdn_pg.service.transfer.deployment import Deployment, read_deployment
from omejdn_pg.service.transfer.export import Snapshot, export_deployment, read_snapshot
from omejdn_pg.service.transfer.plan import plan_import, planned_client
from omejdn_pg.service.transfer.report import KINDS, Action, Change, Progress, Report

__all__ = [
    "KINDS",
    "MAX_IMPORT_ATTEMPTS",
    "Action",
    "Change",
    "Deployment",
    "Progress",
    "Report",
    "Snapshot",
    "export_deployment",
    "import_deployment",
    "keys_differ",
    "plan_import",
    "planned_client",
    "read_deployment",
    "read_snapshot",
]

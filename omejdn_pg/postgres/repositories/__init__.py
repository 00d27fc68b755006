"""Data access, one repository per aggregate: users, clients, keys, configuration sections.

SQLAlchemy lives here and nowhere above. A repository is handed a Connection
and never commits, rolls back or closes it: the caller (``Database.read`` or
``Database.write``) owns the unit of work, so one event is one transaction.
"""

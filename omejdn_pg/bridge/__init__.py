"""The storage service for the real (Ruby) Omejdn: ``omejdn-pg serve`` and its wire protocol.

Omejdn loads a small Ruby plugin that forwards every storage event over a Unix
socket to this service, which answers through the same handler adapters as
the Python API (:mod:`omejdn_pg.bridge.answers`).
"""

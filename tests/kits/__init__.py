"""What several test modules share besides fixtures, one kit per purpose.

Fixtures live in the ``conftest.py`` of the folder whose tests use them (the
top one for the database, which every folder may use). Test modules import
from these kits, never from one another.
"""

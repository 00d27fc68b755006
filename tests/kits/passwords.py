"""Password hashes the tests store, as Omejdn writes them."""

from __future__ import annotations

# Omejdn's own seed users carry this bcrypt hash (cost 12) of "mypassword".
OMEJDN_HASH = "$2a$12$s1UhO7bRO9b5fTTiRE4KxOR88vz3462Bxn8DGh/iDX26Neh95AHrC"

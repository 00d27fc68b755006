"""PostgreSQL storage backend for the Omejdn OAuth 2.0 / OpenID Connect server."""

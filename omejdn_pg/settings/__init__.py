"""Settings: libpq connections, the backend's section and Omejdn's static configuration.

Import from the module that defines a name (``settings.connection``,
``settings.backend``, ``settings.validation``, ``settings.reads``,
``settings.static``, ``settings.checks``); this package itself imports
nothing, so reading the static configuration loads no database driver.
"""

"""``python -m omejdn_pg``: the same command line as ``omejdn-pg``."""

from omejdn_pg.cli.app import main

if __name__ == "__main__":
    main()

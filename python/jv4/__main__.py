"""`python -m jv4`: the same command as `jv4` (see jv4/cli.py)."""

import sys

from jv4.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m ghetl.sandbox``: the same command as ``ghetl sandbox``."""

import sys

from .cli import main

sys.exit(main())

"""``python -m cachekern``: the command line (cachekern.cli)."""

import sys

from cachekern.cli import main

sys.exit(main())

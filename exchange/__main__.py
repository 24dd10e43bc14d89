"""``python -m exchange``: the same as the ``lienthong`` command."""

import sys

from exchange.cli import main

sys.exit(main())

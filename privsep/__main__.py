"""``python -m privsep``: the same as the ``privsep`` command."""

import sys

from privsep.cli import main

sys.exit(main())

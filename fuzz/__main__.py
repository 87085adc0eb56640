"""``python -m fuzz``: see ``fuzz/__init__.py``."""

import sys

from fuzz.run import main

sys.exit(main())

"""``python -m privsep``: the same as the ``privsep`` command.

``-m`` puts the working directory first on ``sys.path`` (unless ``-P``), ahead of the standard
library. privsep imports some modules only when it needs them, which may be after the sandbox
has run (a report, a hint); a sandbox allowed to write its working directory could leave a
``shlex.py`` there for the privileged broker to import. privsep never imports anything from
the working directory, so the entry goes before anything else is imported.
"""

import os
import sys

if not sys.flags.safe_path and sys.path and sys.path[0] == os.getcwd():
    del sys.path[0]

from privsep.cli import entry  # after sys.path is mended

entry()

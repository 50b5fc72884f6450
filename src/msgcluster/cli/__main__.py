"""``python -m msgcluster.cli``: the same as the ``msgcluster`` command."""

import sys

from . import main

sys.exit(main())

"""``python -m msgcluster.worker module:app [QUEUE ...]``: the same as ``msgcluster worker``."""

import sys

from ..cli import main

sys.exit(main(["worker", *sys.argv[1:]]))

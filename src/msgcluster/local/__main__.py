"""``python -m msgcluster.local``: run the embedded local AWS in the foreground."""

from . import main

main()

"""The ``msgcluster`` command: queue operations, message clusters, setup.

``main(argv)`` runs it in-process and returns the exit code (0 ok, 1 failed,
2 usage error, 3 not found, 4 watched cluster ended in error, 5 watch timed
out, 130 interrupted). See docs/cli.md.
"""

from ._app import main
from ._common import (
    EXIT_CLUSTER_ERROR,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
)

__all__ = [
    "EXIT_CLUSTER_ERROR",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "main",
]

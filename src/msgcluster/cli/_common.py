"""What every command shares: exit codes, the CLI's own errors, the invocation."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .._settings import Settings
    from ._render import Output

__all__ = [
    "EXIT_CLUSTER_ERROR",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "CliError",
    "Invocation",
    "NotFound",
    "Unsupported",
    "UsageError",
    "positive",
    "seconds",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # an AWS or msgcluster operation failed
EXIT_USAGE: Final = 2  # bad arguments, bad URI, unknown scheme, unsupported operation
EXIT_NOT_FOUND: Final = 3  # no such message, cluster, queue, table or bucket
EXIT_CLUSTER_ERROR: Final = 4  # `cluster watch`: the cluster ended ERROR or was cancelled
EXIT_TIMEOUT: Final = 5  # `cluster watch --timeout`: still running when time ran out
EXIT_INTERRUPTED: Final = 130  # Ctrl-C (128 + SIGINT), as shells report it


class CliError(Exception):
    """An error the CLI reports as one line, with its exit code."""

    code: int = EXIT_FAILED

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(CliError):
    """Bad arguments (argparse's errors are raised as this too)."""

    code = EXIT_USAGE


class Unsupported(UsageError):
    """The queue's scheme cannot do this operation."""


class NotFound(CliError):
    """The message id (or cluster key) does not exist."""

    code = EXIT_NOT_FOUND


@dataclass(frozen=True)
class Invocation:
    """One run of a command: its arguments, the resolved settings and the output."""

    args: argparse.Namespace
    settings: Settings
    out: Output


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value

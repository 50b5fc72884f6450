"""What every command shares: exit codes, the CLI's own errors, the invocation."""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

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
    "port",
    "positive",
    "queue_name",
    "seconds",
    "table_name",
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


def up_to(high: int) -> Callable[[str], int]:
    """A positive integer of at most ``high`` (an argparse type)."""

    def convert(text: str) -> int:
        value = positive(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"expected at most {high:,}, got {value:,}")
        return value

    return convert


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


_TABLE_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_QUEUE_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,80}")


def table_name(text: str) -> str:
    """A DynamoDB table name: 3-255 letters, digits, '_', '.' or '-'."""
    if not _TABLE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid table name {text[:60]!r}: DynamoDB table names are 3-255 letters, "
            "digits, '_', '.' or '-'"
        )
    return text


def queue_name(text: str) -> str:
    """An SQS queue name (1-80 letters, digits, '-' or '_', optional '.fifo'
    within the 80), or a queue URL / ``sqs://`` URI whose last part is one."""
    name = text.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    base = name.removesuffix(".fifo")
    if not _QUEUE_NAME.fullmatch(base) or len(name) > 80:
        raise argparse.ArgumentTypeError(
            f"invalid queue name {name[:80]!r}: SQS queue names are 1-80 letters, digits, "
            "'-' or '_', with an optional '.fifo' suffix (within the 80)"
        )
    return text


def port(text: str) -> int:
    """A TCP port, 0-65535 (0: a free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535, got {text!r:.40}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535 (0: a free one), got {value}")
    return value

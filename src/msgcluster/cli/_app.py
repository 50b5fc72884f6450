"""The parser, the global options, dispatch, and errors as exit codes."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any, NoReturn

import anyio

from .. import __version__
from .._errors import (
    ConfigurationError,
    MsgclusterError,
    RecordNotFoundError,
    ResourceNotFoundError,
    ValidationError,
)
from .._settings import Settings
from . import _cluster_cmds, _iam, _queue_cmds, _setup_cmds, _worker_cmd
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    CliError,
    Invocation,
    UsageError,
)
from ._render import Output

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["build_parser", "main"]

PROG = "msgcluster"

DESCRIPTION = """\
Operate msgcluster queues and message clusters.

Queue commands take a queue URI: sqs://<name>, an SQS queue URL, or
dynamodb://<table>?queue=<name>. Credentials come from the environment or
the default AWS credential chain, never from flags.
"""

EPILOG = """\
exit codes: 0 ok, 1 operation failed, 2 usage error (bad arguments, bad URI,
operation unsupported by the scheme), 3 not found, 4 watched cluster ended in
ERROR or was cancelled, 5 watch timed out, 130 interrupted.
Documentation: docs/cli.md
"""


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors raised (reported as one line, exit code 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


def global_options() -> argparse.ArgumentParser:
    """Options every command accepts, before or after the command name.

    Defaults are SUPPRESSed so a subcommand never resets what was given
    before it; :func:`_settings` applies the environment and the defaults.
    """
    common = Parser(add_help=False)
    group = common.add_argument_group("global options")
    add = group.add_argument
    hide = argparse.SUPPRESS
    add("--endpoint-url", default=hide, metavar="URL", help="AWS endpoint (env AWS_ENDPOINT_URL)")
    add(
        "--region",
        default=hide,
        help="AWS region (env AWS_REGION, AWS_DEFAULT_REGION; else the profile's, else us-east-1)",
    )
    add(
        "--table",
        default=hide,
        metavar="NAME",
        help="msgcluster's DynamoDB table (env MSGCLUSTER_TABLE; default msgcluster)",
    )
    add("--bucket", default=hide, metavar="NAME", help="S3 bucket (env MSGCLUSTER_BUCKET)")
    add("--json", action="store_true", default=hide, help="print one JSON document on stdout")
    add("--debug", action="store_true", default=hide, help="show the traceback of an error")
    return common


def build_parser() -> Parser:
    common = global_options()
    parser = Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _queue_cmds.register(commands, common)
    _cluster_cmds.register(commands, common)
    _setup_cmds.register(commands, common)
    _iam.register(commands, common)
    _worker_cmd.register(commands, common)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.resolve(
        table=getattr(args, "table", None),
        bucket=getattr(args, "bucket", None),
        endpoint_url=getattr(args, "endpoint_url", None),
        region=getattr(args, "region", None),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``msgcluster`` command; returns its exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments
    try:
        args = build_parser().parse_args(arguments)
        out = Output(json_mode=bool(getattr(args, "json", False)))
        invocation = Invocation(args=args, settings=_settings(args), out=out)
        handler: Any = args.handler
        if inspect.iscoroutinefunction(handler):
            return int(anyio.run(handler, invocation))
        return int(handler(invocation))
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if isinstance(_leaf(exc), BrokenPipeError):
            return _reader_gone()
        return report(exc, debug=debug)


def _reader_gone() -> int:
    """`msgcluster ls ... | head`: the reader went away; say nothing more. stdout
    now points at /dev/null so the interpreter's final flush does not complain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_FAILED


def report(exc: BaseException, *, debug: bool = False) -> int:
    """Print ``msgcluster: error: <one line>`` (after the traceback with --debug)."""
    error = _leaf(exc)
    if debug:
        traceback.print_exception(exc)
    code, text = exit_code(error), _one_line(error)
    if code == EXIT_FAILED and not isinstance(error, MsgclusterError | CliError):
        text = f"unexpected {type(error).__name__}: {text}"
        if not debug:
            text += " (run with --debug for the traceback)"
    sys.stderr.write(f"{PROG}: error: {text}\n")
    return code


def exit_code(error: BaseException) -> int:
    if isinstance(error, CliError):
        return error.code
    if isinstance(error, RecordNotFoundError | ResourceNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, ConfigurationError | ValidationError):
        return EXIT_USAGE
    return EXIT_FAILED


def _leaf(exc: BaseException) -> BaseException:
    """The one error inside (nested) single-error exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    if not text:
        return type(error).__name__
    first, _, rest = text.partition("\n")
    return first + (" (more with --debug)" if rest.strip() else "")

"""Scheme -> backend factory, imported only when a URI with the scheme opens.

Lookup order: :func:`register_backend` registrations, then the built-ins,
then the ``msgcluster.queue_backends`` entry-point group (read on demand, so
installing a plug-in needs no import and an unused one costs nothing). An
entry point cannot shadow a built-in scheme; ``register_backend(...,
replace=True)`` can.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import re
from typing import TYPE_CHECKING, Any, Final, Protocol

from .._errors import (
    BackendUnavailableError,
    ConfigurationError,
    UnknownSchemeError,
)
from ._contract import Driver, Queue
from ._portable import PortableQueue
from ._uri import parse_queue_uri

if TYPE_CHECKING:
    from collections.abc import Awaitable, Generator
    from types import TracebackType

    from ._offload import PayloadStore
    from ._uri import QueueURI

__all__ = [
    "ENTRY_POINT_GROUP",
    "OpeningQueue",
    "QueueFactory",
    "check_queue_uri",
    "open_queue",
    "register_backend",
    "registered_schemes",
]

ENTRY_POINT_GROUP = "msgcluster.queue_backends"


class QueueFactory(Protocol):
    """Opens a queue for a parsed URI; keyword options override query parameters.

    Raise :class:`~msgcluster.QueueURIError` for unknown or invalid parameters.
    """

    def __call__(self, uri: QueueURI, /, **options: Any) -> Awaitable[Driver]: ...


# "module:attribute" strings: importing a backend (and its dependencies) is
# deferred until a URI needs it.
_BUILTIN: dict[str, str] = {
    "memory": "msgcluster.queues._memory:open_memory_queue",
    "sqs": "msgcluster.queues._sqs:open_sqs_queue",
    "dynamodb": "msgcluster.queues._dynamodb:open_dynamodb_queue",
}
# A full SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>,
# or http://localhost:4566/... for a local endpoint) opens with sqs.
_ALIASES: dict[str, str] = {"http": "sqs", "https": "sqs"}
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")

_registered: dict[str, QueueFactory | str] = {}


def register_backend(scheme: str, factory: QueueFactory | str, *, replace: bool = False) -> None:
    """Make ``open_queue("<scheme>://...")`` use ``factory``.

    ``factory`` is an async callable ``(uri: QueueURI, /, **options) ->
    Driver`` (see :class:`~msgcluster.queues.Driver`) or a
    ``"module:attribute"`` string imported on first use. A scheme already
    known (registered or built in) needs ``replace=True``.
    """
    scheme = scheme.lower() if isinstance(scheme, str) else scheme
    if not isinstance(scheme, str) or not _SCHEME.fullmatch(scheme):
        raise ConfigurationError(f"not a URI scheme: {scheme!r} (letters, digits, + - .)")
    if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        raise ConfigurationError("factory must be an async callable or a 'module:attribute' string")
    if not replace and (scheme in _registered or scheme in _BUILTIN or scheme in _ALIASES):
        raise ConfigurationError(
            f"queue scheme {scheme!r} is already registered; pass replace=True to override it"
        )
    _registered[scheme] = factory


def registered_schemes() -> tuple[str, ...]:
    """Every scheme ``open_queue`` knows (sorted), entry points included.

    ``http``/``https`` SQS queue URLs are accepted too and open with ``sqs``.
    """
    return tuple(sorted({*_registered, *_BUILTIN, *_entry_points()} - _ALIASES.keys()))


def open_queue(uri: str, /, **options: Any) -> OpeningQueue:
    """Open the queue named by ``uri`` with the backend registered for its scheme.

    Use as ``async with open_queue(uri) as queue:`` (closed on exit) or
    ``queue = await open_queue(uri)`` (call ``await queue.aclose()``).
    ``options`` override the URI's query parameters; ``payloads=PayloadStore(s3,
    bucket)`` offloads bodies larger than the queue takes to S3, in the SQS
    Extended Client's format, and fetches them back on receive. The scheme is resolved
    now, so an unknown one raises :class:`~msgcluster.UnknownSchemeError` here;
    parameters are checked by the backend when the queue opens.
    """
    parsed = parse_queue_uri(uri)
    payloads = options.pop("payloads", None)
    return OpeningQueue(_factory_for(parsed.scheme), parsed, options, payloads)


def check_queue_uri(uri: str, /, **options: Any) -> QueueURI:
    """``uri`` parsed and checked as :func:`open_queue` would, without opening
    anything (no I/O): the scheme has a backend, and for the built-in backends
    the queue name, query parameters and ``options`` are valid. A third-party
    factory is asked too if it has a ``check(uri, **options)`` attribute.

    Raises :class:`~msgcluster.QueueURIError` (or UnknownSchemeError,
    BackendUnavailableError); the message never repeats a credential.
    """
    parsed = parse_queue_uri(uri)
    options = {k: v for k, v in options.items() if k != "payloads"}
    factory = _factory_for(parsed.scheme)
    backend = _ALIASES.get(parsed.scheme, parsed.scheme)
    if parsed.scheme not in _registered and backend not in _registered and backend in _BUILT_IN:
        check = importlib.import_module(_BUILT_IN[backend], __package__).check_uri
    else:
        check = getattr(factory, "check", None)
    if callable(check):
        check(parsed, **options)
    return parsed


# The built-in backends' modules: each has check_uri(uri, **options).
_BUILT_IN: Final = {"memory": "._memory", "sqs": "._sqs", "dynamodb": "._dynamodb"}


class OpeningQueue:
    """What :func:`open_queue` returns: await it, or use it with ``async with``."""

    __slots__ = ("_factory", "_options", "_payloads", "_queue", "_uri")

    def __init__(
        self,
        factory: QueueFactory,
        uri: QueueURI,
        options: dict[str, Any],
        payloads: PayloadStore | None = None,
    ) -> None:
        self._factory = factory
        self._uri = uri
        self._options = options
        self._payloads = payloads
        self._queue: Queue | None = None

    def __await__(self) -> Generator[Any, None, Queue]:
        return self._open().__await__()

    async def _open(self) -> Queue:
        driver = await self._factory(self._uri, **self._options)
        if not isinstance(driver, Driver):
            if hasattr(driver, "aclose"):
                await driver.aclose()
            raise ConfigurationError(
                f"the {self._uri.scheme}:// backend returned {type(driver).__name__}, "
                "which does not implement msgcluster.queues.Driver"
            )
        return PortableQueue(driver, payloads=self._payloads)

    async def __aenter__(self) -> Queue:
        queue = await self._open()
        try:
            self._queue = await queue.__aenter__()
        except BaseException:
            await queue.aclose()
            raise
        return self._queue

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._queue is not None:
            queue, self._queue = self._queue, None
            await queue.__aexit__(exc_type, exc, tb)


def _factory_for(scheme: str) -> QueueFactory:
    target = _registered.get(scheme)
    if target is None:
        backend = _ALIASES.get(scheme, scheme)
        target = _registered.get(backend) or _BUILTIN.get(backend)
        if target is None:
            entry_point = _entry_points().get(scheme)
            if entry_point is None:
                raise _unknown_scheme(scheme)
            return _load_entry_point(scheme, entry_point)
        scheme = backend
    return target if not isinstance(target, str) else _import_factory(scheme, target)


def _import_factory(scheme: str, target: str) -> QueueFactory:
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if target == _BUILTIN.get(scheme) and exc.name == module_name:
            raise BackendUnavailableError(
                f"{scheme}:// is a built-in queue scheme, but its backend ({module_name}) is "
                "missing from this installation of msgcluster: reinstall it. Available now: "
                f"{', '.join(_available_builtins())}"
            ) from exc
        raise BackendUnavailableError(
            f"the {scheme}:// queue backend ({module_name}) cannot be imported: {exc}; "
            "install the package (or extra) that provides it"
        ) from exc
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the {scheme}:// queue backend ({module_name}) cannot be imported: {exc}; "
            "a dependency is missing: install the extra that provides it"
        ) from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise BackendUnavailableError(f"{target!r} (backend of {scheme}://) is not a callable")
    return factory  # type: ignore[no-any-return]


def _available_builtins() -> list[str]:
    available = []
    for scheme, target in sorted(_BUILTIN.items()):
        if importlib.util.find_spec(target.partition(":")[0]) is not None:
            available.append(f"{scheme}://")
    return available


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    # Read every time it is needed (rarely: only for schemes not found
    # above), so a plug-in installed while the process runs is seen. Built-in
    # names are skipped: a plug-in cannot take over sqs:// by installing.
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {
        ep.name.lower(): ep
        for ep in found
        if ep.name.lower() not in _BUILTIN and ep.name.lower() not in _ALIASES
    }


def _load_entry_point(scheme: str, entry_point: importlib.metadata.EntryPoint) -> QueueFactory:
    where = f"entry point {entry_point.value!r}"
    if entry_point.dist is not None:
        where += f" of {entry_point.dist.name}"
    try:
        factory = entry_point.load()
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the {scheme}:// queue backend ({where}) cannot be imported: {exc}"
        ) from exc
    except AttributeError as exc:
        raise BackendUnavailableError(
            f"the {scheme}:// queue backend ({where}) is broken: {exc}"
        ) from exc
    if not callable(factory):
        raise BackendUnavailableError(f"the {scheme}:// queue backend ({where}) is not callable")
    return factory  # type: ignore[no-any-return]


def _unknown_scheme(scheme: str) -> UnknownSchemeError:
    registered = registered_schemes()
    close = difflib.get_close_matches(scheme, [*registered, *_ALIASES], n=1, cutoff=0.6)
    suggestion = close[0] if close else None
    hint = f"; did you mean {suggestion}://?" if suggestion else ""
    return UnknownSchemeError(
        f"no queue backend for {scheme}:// (registered: "
        f"{', '.join(f'{s}://' for s in registered)}; SQS queue URLs with https:// work too){hint}",
        scheme=scheme,
        registered=registered,
        suggestion=suggestion,
    )

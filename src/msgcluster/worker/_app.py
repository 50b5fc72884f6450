"""``App``: typed handlers, decoded with msgspec, and the cluster callback.

An app is a registry; :class:`~msgcluster.worker.Worker` runs it against a
queue. One body type per handler: a Struct (tagged Structs dispatch by tag),
any type msgspec decodes, ``str`` (a plain body's text as sent) or ``bytes``.
Several handlers need types msgspec can tell apart in one union (tagged
Structs, or one Struct plus non-object types); that is checked when a
handler is registered, not when a message arrives.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, Union, overload

import msgspec

from .._batching import as_list
from .._client import Client
from .._context import check_queue_target
from .._errors import ConfigurationError, ValidationError
from ..clusters._callbacks import CallbackRegistry, check_callback_name
from ..queues._registry import check_queue_uri
from ..read._bodies import BodyDecoder, body_decoder
from ..runtime._body_types import body_type_problem
from ._policy import DEFAULT_POLICY, HandlerPolicy, make_policy

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Iterable

    from .._results import BatchSendResult
    from .._schemas import RecordKey
    from .._settings import Settings
    from ..clusters._callbacks import ClusterCallback
    from ._context import MessageContext

__all__ = ["App", "Handler"]

T = TypeVar("T")
Handler = Callable[..., Awaitable[Any]]


class _Registered:
    __slots__ = ("func", "policy", "takes_context", "type")

    def __init__(
        self, type_: Any, func: Handler, takes_context: bool, policy: HandlerPolicy
    ) -> None:
        self.type = type_
        self.func = func
        self.takes_context = takes_context
        self.policy = policy


class App:
    """Handlers by body type, the cluster completion callback, and the Client
    used for tracked messages and cluster tasks.

    ``client`` is needed only for tracked messages (sent with
    ``Client.send_message`` / cluster tasks): they are checked, completed and
    counted through it. Plain bodies on a queue need no client.
    """

    def __init__(
        self, client: Client | None = None, *, name: str = "msgcluster", queue: str | None = None
    ) -> None:
        if client is not None and not isinstance(client, Client):
            raise ValidationError(
                "App(client=...) takes a msgcluster.Client (or None for plain bodies only), "
                f"got {type(client).__name__}"
            )
        if not isinstance(name, str) or not name:
            raise ValidationError(f"App(name=...) takes a non-empty str, got {type(name).__name__}")
        if queue is not None:
            # Malformed, credentials, unknown scheme or parameter: refused now.
            check_queue_uri(check_queue_target(queue))
        self.client = client
        self.name = name
        # The queue send() and the runner use when none is named.
        self.queue = queue
        self._handlers: list[_Registered] = []
        self._by_type: dict[type, _Registered] = {}
        self._body_type: Any = Any
        self._decoder: BodyDecoder | None = None
        self._callbacks = CallbackRegistry()
        # What workers run for a cluster: the registry (it dispatches by the
        # cluster's callback name), once a callback is registered.
        self.cluster_callback: ClusterCallback | None = None

    def check_ready(self) -> None:
        """Refuse to consume with nothing to run: every message would be
        dead-lettered as having no handler."""
        if not self._handlers and self.cluster_callback is None:
            raise ConfigurationError(
                f"App {self.name!r} has no handlers: register one with @app.handler(BodyType) "
                "(or a cluster callback) before starting a Worker"
            )

    # ---------------------------------------------------------- registration

    def handler(
        self,
        body_type: type[T],
        *,
        retries: int | None = None,
        backoff: float | Callable[[int], float] | None = None,
        timeout: float | None = None,
        visibility: float | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register ``async def handle(body: body_type[, ctx: MessageContext])``.

        The policy options default to the Worker's values (see
        :class:`~msgcluster.worker.HandlerPolicy`): ``retries`` (tries after
        the first, then the dead-letter queue), ``backoff`` (seconds before
        the first retry, doubling; or ``f(attempt) -> seconds``),
        ``timeout`` (seconds a run may take) and ``visibility`` (seconds the
        message stays invisible while it runs).
        """
        problem = body_type_problem(body_type)
        if problem is not None:
            raise ConfigurationError(f"app.handler(body_type): {problem}")
        policy = make_policy(
            retries=retries, backoff=backoff, timeout=timeout, visibility=visibility
        )

        def register(func: Handler) -> Handler:
            if not inspect.iscoroutinefunction(func):
                raise ConfigurationError(
                    f"handler {getattr(func, '__name__', func)!r} must be an async function"
                )
            params = [
                p
                for p in inspect.signature(func).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            if not 1 <= len(params) <= 2:
                raise ConfigurationError(
                    f"handler {func.__name__!r} takes (body) or (body, ctx), "
                    f"not {len(params)} positional parameters"
                )
            if any(r.type == body_type for r in self._handlers):
                raise ConfigurationError(f"a handler for {body_type!r} is already registered")
            registered = _Registered(body_type, func, len(params) == 2, policy)
            self._rebuild([*self._handlers, registered])
            return func

        return register

    @overload
    def on_cluster_complete(self, callback: ClusterCallback) -> ClusterCallback: ...
    @overload
    def on_cluster_complete(self, *, name: str) -> Callable[[ClusterCallback], ClusterCallback]: ...
    def on_cluster_complete(
        self, callback: ClusterCallback | None = None, *, name: str | None = None
    ) -> Any:
        """Register a cluster completion callback (usable as a decorator):
        ``callback(record, get_globals)``, run exactly once per cluster by
        whichever worker finishes it or consumes its completion event.

        ``@app.on_cluster_complete`` registers the default callback;
        ``@app.on_cluster_complete(name="thumbnails")`` the one that clusters
        created with ``callback="thumbnails"`` run instead.
        """

        if name is not None:
            check_callback_name(name)  # now, not when the decorator is applied

        def register(func: ClusterCallback) -> ClusterCallback:
            self._callbacks.register(func, name)
            self.cluster_callback = self._callbacks
            if self.client is not None:
                self.client.register_cluster_callback(func, name=name)
            return func

        return register if callback is None else register(callback)

    def callback_names(self) -> list[str]:
        """The names of the named completion callbacks."""
        return self._callbacks.names()[1]

    def _rebuild(self, handlers: list[_Registered]) -> None:
        types = tuple(r.type for r in handlers)
        target: Any = types[0] if len(types) == 1 else Union[types]  # noqa: UP007
        try:
            decoder = body_decoder(target)
        except TypeError as exc:
            raise ConfigurationError(
                f"handlers for {', '.join(map(repr, types))} cannot share one queue: msgspec "
                f"cannot tell their bodies apart ({exc}); use tagged Structs "
                "(msgspec.Struct, tag=True)"
            ) from exc
        self._handlers = handlers
        self._by_type = {r.type: r for r in handlers if isinstance(r.type, type)}
        self._body_type = target
        self._decoder = decoder

    # --------------------------------------------------------------- dispatch

    @property
    def body_type(self) -> Any:
        """The type bodies are decoded into (a Union for several handlers)."""
        return self._body_type

    def decode(self, data: bytes | str, message_id: str = "") -> Any:
        """Decode a plain body (one msgcluster did not send) as the handlers declare:
        JSON into their types, text for a ``str`` handler, bytes for ``bytes``.
        Raises :class:`~msgcluster.BodyDecodeError`."""
        if self._decoder is None:
            raise ConfigurationError("the app has no handlers: register one with @app.handler")
        return self._decoder.plain(data, message_id)

    def handler_for(self, body: Any) -> _Registered:
        if len(self._handlers) == 1:
            return self._handlers[0]
        for cls in type(body).__mro__:
            found = self._by_type.get(cls)
            if found is not None:
                return found
        for registered in self._handlers:  # generic aliases: first that accepts it
            try:
                msgspec.convert(body, registered.type)
            except (msgspec.ValidationError, TypeError):
                continue
            return registered
        raise ConfigurationError(f"no handler for a body of type {type(body).__name__}")

    def policy_for(self, body: Any) -> HandlerPolicy:
        """The policy of the handler that takes ``body`` (the default if none)."""
        try:
            return self.handler_for(body).policy
        except ConfigurationError:
            return DEFAULT_POLICY

    def policies(self) -> list[HandlerPolicy]:
        return [r.policy for r in self._handlers]

    async def dispatch(self, body: Any, ctx: MessageContext) -> None:
        registered = self.handler_for(body)
        if registered.takes_context:
            await registered.func(body, ctx)
        else:
            await registered.func(body)

    # --------------------------------------------------------------- producing

    def _producer(self, queue: str | None) -> tuple[Client, str]:
        target = queue or self.queue
        if target is None:
            raise ConfigurationError(
                f"App {self.name!r} has no default queue: pass queue=..., or create it with "
                "App(client, queue='sqs://jobs')"
            )
        if self.client is None:
            raise ConfigurationError(
                f"App {self.name!r} has no Client: create it with App(client, ...) to send"
            )
        return self.client, target

    def _check_sendable(self, body: Any) -> None:
        """A body no registered handler takes would be dead-lettered on arrival."""
        if not self._handlers or any(_accepts(r.type, body) for r in self._handlers):
            return
        raise ValidationError(
            f"App {self.name!r} has no handler for a {type(body).__name__} body; "
            f"its handlers take {', '.join(_type_name(r.type) for r in self._handlers)}"
        )

    async def send(
        self, body: Any, meta: Any = None, *, queue: str | None = None, **kw: Any
    ) -> RecordKey:
        """Send one tracked message to ``queue`` (default: the App's), checked
        against the registered handlers; ``kw`` as for ``Client.send_message``."""
        client, target = self._producer(queue)
        self._check_sendable(body)
        return await client.send_message(target, body, meta, **kw)

    async def send_batch(
        self, bodies: Iterable[Any], meta: Any = None, *, queue: str | None = None, **kw: Any
    ) -> BatchSendResult:
        """Send tracked messages, batched (``Client.send_message_batch``)."""
        client, target = self._producer(queue)
        checked = as_list(bodies, "bodies")
        for body in checked:
            self._check_sendable(body)
        return await client.send_message_batch(target, checked, meta, **kw)

    async def create_cluster(
        self,
        tasks: Iterable[Any] | AsyncIterable[Any],
        meta: Any = None,
        globals: Any = None,
        *,
        queue: str | None = None,
        **kw: Any,
    ) -> RecordKey:
        """``Client.create_message_cluster`` on the App's queue (or ``queue``);
        ``callback=`` must name a callback registered on this App."""
        client, target = self._producer(queue)
        name = kw.get("callback")
        if name is not None and name not in self.callback_names():
            raise ValidationError(
                f"App {self.name!r} has no completion callback named {name!r}; register it "
                f"with @app.on_cluster_complete(name={name!r})"
            )
        return await client.create_message_cluster(target, tasks, meta, globals, **kw)

    @contextlib.asynccontextmanager
    async def opened(self, settings: Settings | None = None) -> AsyncIterator[Client]:
        """The App's Client, open for the block: opened (and closed after) if it is
        not open yet; made from ``settings`` (or the environment) if the App has none."""
        if self.client is None:
            self.client = Client._from_settings(settings) if settings else Client()
            for name, func in self._callbacks.callbacks.items():
                self.client.register_cluster_callback(func, name=name)
        client = self.client
        if client.is_open:
            yield client
            return
        async with client:
            yield client


def _accepts(body_type: Any, body: Any) -> bool:
    """Would a handler of ``body_type`` take ``body`` (as sent, then decoded)?"""
    if body_type is Any or (isinstance(body_type, type) and isinstance(body, body_type)):
        return True
    try:
        msgspec.convert(msgspec.to_builtins(body), body_type)
    except (msgspec.ValidationError, TypeError):
        return False
    return True


def _type_name(value: Any) -> str:
    return getattr(value, "__name__", None) or repr(value)

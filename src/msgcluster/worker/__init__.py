"""The worker runtime: typed handlers on any queue backend.

::

    app = msgcluster.App(client=mc)

    @app.handler(Resize)
    async def resize(job: Resize) -> None: ...

    await msgcluster.Worker(app, "sqs://jobs", concurrency=16).run()
"""

from ._app import App, Handler
from ._context import MessageContext
from ._flow import Ack, HandlerFlow, Reject, Retry
from ._metrics import LoggingMetrics, Outcome, WorkerMetrics, WorkerStats
from ._policy import HandlerPolicy, HandlerTimeoutError
from ._runtime import Worker

__all__ = [
    "Ack",
    "App",
    "Handler",
    "HandlerFlow",
    "HandlerPolicy",
    "HandlerTimeoutError",
    "LoggingMetrics",
    "MessageContext",
    "Outcome",
    "Reject",
    "Retry",
    "Worker",
    "WorkerMetrics",
    "WorkerStats",
]

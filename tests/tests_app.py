"""An App for the runner tests: ``msgcluster worker tests_app:app``.

Run from the tests directory. The App has no Client (the runner makes one
from its options and the environment) and no default queue unless
``TESTS_APP_QUEUE`` is set. Each handled message appends ``<n>`` to the
file named by ``TESTS_APP_OUT`` (``O_APPEND``, so concurrent lines do not
interleave), after sleeping ``TESTS_APP_DELAY`` seconds.
"""

from __future__ import annotations

import os

import anyio
import msgspec

from msgcluster import App


class Job(msgspec.Struct):
    n: int


app = App(queue=os.environ.get("TESTS_APP_QUEUE"), name="tests-app")


@app.handler(Job)
async def handle(job: Job) -> None:
    await anyio.sleep(float(os.environ.get("TESTS_APP_DELAY", "0")))
    out = os.open(os.environ["TESTS_APP_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(out, f"{job.n}\n".encode())
    finally:
        os.close(out)


def make_app() -> App:
    """A factory: ``msgcluster worker tests_app:make_app``."""
    return app

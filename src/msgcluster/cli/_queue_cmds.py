"""Queue commands (DynamoMQ's set) against any queue URI.

A queue whose backend implements :class:`~msgcluster.queues._admin.QueueAdmin`
gets every command. ``sqs://`` does not (SQS cannot address a message by id):
``qstat``, ``dlq``, ``purge`` and ``redrive --all`` use SQS's own API, and the
by-id commands say they are unsupported (exit code 2). ``receive`` and
``enqueue-test`` need only the queue contract, so they work on every scheme.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ..queues import OutgoingMessage
from ..queues._admin import MessageInfo, QueueAdmin, QueueStats
from . import _sqs_admin as sqs_admin
from ._common import (
    EXIT_OK,
    CliError,
    Invocation,
    NotFound,
    positive,
    seconds,
    up_to,
)
from ._opening import admin, driver_of, opened, sqs_only
from ._redrive import redrive
from ._render import body_text, iso_time

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator

    from ..queues import Queue, ReceivedMessage

__all__ = ["register"]

_BODY_COLUMN: Final = 60
# How long a message received by `receive` (or `redrive --all` on SQS) stays
# hidden from other consumers while the command works on it.
_HOLD_SECONDS: Final = 60


# --------------------------------------------------------------------------- documents


def stats_doc(uri: str, stats: QueueStats) -> dict[str, Any]:
    return {"queue": uri, **msgspec.to_builtins(stats)}


def message_doc(message: MessageInfo) -> dict[str, Any]:
    body, encoding = body_text(message.body)
    return {
        "id": message.id,
        "state": message.state,
        "body": body,
        "body_encoding": encoding,
        "receive_count": message.receive_count,
        "sent_at": iso_time(message.sent_at),
        "visible_at": iso_time(message.visible_at),
        "group_id": message.group_id,
        "attributes": dict(message.attributes),
        "dead_letter_reason": message.dead_letter_reason,
    }


def received_doc(message: ReceivedMessage) -> dict[str, Any]:
    body, encoding = body_text(message.body)
    return {
        "id": message.id,
        "body": body,
        "body_encoding": encoding,
        "receive_count": message.receive_count,
        "sent_at": iso_time(message.sent_at),
        "group_id": message.group_id,
        "attributes": dict(message.attributes),
    }


def _short(text: str, width: int = _BODY_COLUMN) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _show_stats(inv: Invocation, uri: str, stats: QueueStats, title: str) -> None:
    doc = stats_doc(uri, stats)
    if inv.out.json:
        inv.out.document(doc)
        return
    rows = [(name, value) for name, value in doc.items() if name != "queue"]
    inv.out.fields(rows, title=title)


# --------------------------------------------------------------------------- qstat, dlq


async def qstat(inv: Invocation) -> int:
    async with opened(inv, read_only=True) as queue:
        if isinstance(driver_of(queue), QueueAdmin):
            stats = await admin(queue, "qstat").stats()
        else:
            stats = await sqs_admin.stats(sqs_only(queue, "qstat"))
        _show_stats(inv, queue.uri, stats, f"queue {stats.name}")
    return EXIT_OK


async def dlq(inv: Invocation) -> int:
    async with opened(inv, read_only=not inv.args.reconcile) as queue:
        if inv.args.reconcile:
            return await sqs_admin.reconcile(inv, sqs_only(queue, "dlq --reconcile"))
        if isinstance(driver_of(queue), QueueAdmin):
            stats = await admin(queue, "dlq").dead_letter_stats()
        else:
            stats = await sqs_admin.dlq_stats(sqs_only(queue, "dlq"))
        _show_stats(inv, queue.uri, stats, f"dead-letter queue {stats.name}")
    return EXIT_OK


# --------------------------------------------------------------------------- ls, get


async def ls(inv: Invocation) -> int:
    dead_letters: bool = inv.args.dlq
    limit: int | None = inv.args.limit
    async with opened(inv, by_id="ls", read_only=True) as queue:
        messages = admin(queue, "ls").list_messages(
            dead_letters=dead_letters, page_size=inv.args.page_size
        )
        if inv.out.json:
            await _ls_json(inv, queue.uri, dead_letters, messages, limit)
            return EXIT_OK
        writer = inv.out.table_writer(["ID", "STATE", "RECEIVES", "SENT", "GROUP", "BODY"])
        async for message in _limited(messages, limit):
            body, encoding = body_text(message.body)
            shown = _short(body) if encoding == "utf-8" else f"<{len(message.body)} bytes>"
            writer.add(
                [
                    message.id,
                    message.state,
                    message.receive_count,
                    iso_time(message.sent_at),
                    message.group_id,
                    shown,
                ]
            )
        count = writer.close()
        inv.out.note(f"{count} {'dead letter' if dead_letters else 'message'}(s)")
    return EXIT_OK


async def _limited(
    messages: AsyncIterator[MessageInfo], limit: int | None
) -> AsyncIterator[MessageInfo]:
    """At most ``limit`` messages; the listing is closed when left early."""
    count = 0
    try:
        async for message in messages:
            if limit is not None and count >= limit:
                break
            count += 1
            yield message
    finally:
        close = getattr(messages, "aclose", None)
        if close is not None:
            await close()


async def _ls_json(
    inv: Invocation,
    uri: str,
    dead_letters: bool,
    messages: AsyncIterator[MessageInfo],
    limit: int | None,
) -> None:
    """One JSON document, written as the pages arrive (never all in memory)."""
    encode = msgspec.json.encode
    head = encode({"queue": uri, "dead_letters": dead_letters}).decode()
    inv.out.write(head[:-1] + ',"messages":[')
    count = 0
    async for message in _limited(messages, limit):
        inv.out.write(("," if count else "") + encode(message_doc(message)).decode())
        count += 1
    inv.out.write(f'],"count":{count}}}\n')


async def get(inv: Invocation) -> int:
    async with opened(inv, by_id="get", read_only=True) as queue:
        message = await admin(queue, "get").get_message(inv.args.id)
        if message is None:
            raise NotFound(f"no message {inv.args.id} in {queue.uri}")
        doc = message_doc(message)
        if inv.out.json:
            inv.out.document({"queue": queue.uri, "message": doc})
        else:
            inv.out.fields(list(doc.items()), title=f"message {message.id}")
    return EXIT_OK


# --------------------------------------------------------------------------- by-id actions

_ACTIONS: Final = {
    "delete": ("deleted", "removed"),
    "fail": ("failed", "counted a failed receive of"),
    "invalid": ("dead_lettered", "moved to the dead-letter queue:"),
    "reset": ("reset", "reset (ready, receive count 0):"),
}


async def by_id(inv: Invocation) -> int:
    command: str = inv.args.command
    message_id: str = inv.args.id
    async with opened(inv, by_id=command) as queue:
        target = admin(queue, command)
        if command == "delete":
            done = await target.delete_message(message_id)
        elif command == "fail":
            done = await target.fail_message(message_id)
        elif command == "invalid":
            done = await target.dead_letter_message(message_id, reason=inv.args.reason)
        else:
            done = await target.reset_message(message_id)
        if not done:
            raise NotFound(f"no message {message_id} in {queue.uri}")
        action, verb = _ACTIONS[command]
        if inv.out.json:
            inv.out.document({"queue": queue.uri, "id": message_id, "action": action, "ok": True})
        else:
            inv.out.line(f"{verb} {message_id}")
    return EXIT_OK


# --------------------------------------------------------------------------- purge, redrive


async def purge(inv: Invocation) -> int:
    dead_letters: bool = inv.args.dlq
    approximate = False
    async with opened(inv) as queue:
        if isinstance(driver_of(queue), QueueAdmin):
            count = await admin(queue, "purge").purge(dead_letters=dead_letters)
        else:
            sqs = sqs_only(queue, "purge")
            count = await sqs_admin.purge(sqs, dead_letters)
            approximate = True
        doc = {
            "queue": queue.uri,
            "dead_letters": dead_letters,
            "purged": count,
            "approximate": approximate,
        }
    if inv.out.json:
        inv.out.document(doc)
    else:
        what = "dead letters" if dead_letters else "messages"
        about = "about " if approximate else ""
        inv.out.line(f"purged {about}{count} {what} from {doc['queue']}")
    return EXIT_OK


# --------------------------------------------------------------------------- receive, enqueue


async def receive(inv: Invocation) -> int:
    wanted: int = inv.args.count
    ack: bool = inv.args.ack
    async with opened(inv) as queue:
        caps = queue.capabilities
        wait = min(float(inv.args.wait), caps.max_wait_seconds)
        hold = min(float(_HOLD_SECONDS), caps.max_visibility_seconds)
        got: dict[str, ReceivedMessage] = {}
        while len(got) < wanted:
            batch = await queue.receive(
                max_messages=min(wanted - len(got), caps.max_receive_batch),
                wait_seconds=wait if not got else 0.0,
                visibility_timeout=hold,
            )
            if not batch:
                break
            for message in batch:
                got.setdefault(message.id, message)
        messages = list(got.values())
        # Only after every receive: a message released early could be received again.
        await _release(queue, messages, ack)
        docs = [received_doc(m) for m in messages]
    if inv.out.json:
        inv.out.document({"queue": queue.uri, "acked": ack, "messages": docs, "count": len(docs)})
        return EXIT_OK
    inv.out.table(
        ["ID", "RECEIVES", "SENT", "GROUP", "BODY"],
        [
            [d["id"], d["receive_count"], d["sent_at"], d["group_id"], _short(d["body"])]
            for d in docs
        ],
    )
    done = "deleted (--ack)" if ack else "visible again (not deleted)"
    inv.out.note(f"received {len(docs)} message(s): {done}")
    return EXIT_OK


async def _release(queue: Queue, messages: list[ReceivedMessage], ack: bool) -> None:
    if ack:
        size = queue.capabilities.max_ack_batch
        for start in range(0, len(messages), size):
            results = await queue.ack(messages[start : start + size])
            errors = [r.error for r in results if r.error is not None]
            if errors:
                raise errors[0]
        return
    for message in messages:
        await queue.nack(message, delay=0)


def _test_message(index: int, body: str | None, fifo: bool, run: str) -> OutgoingMessage:
    text = body if body is not None else msgspec.json.encode({"test": index, "run": run}).decode()
    if not fifo:
        return OutgoingMessage(body=text)
    return OutgoingMessage(body=text, group_id="msgcluster-test", dedup_id=f"{run}-{index}")


async def enqueue_test(inv: Invocation) -> int:
    count: int = inv.args.count
    run = uuid.uuid4().hex[:12]
    async with opened(inv) as queue:
        caps = queue.capabilities
        messages = [_test_message(i, inv.args.body, caps.fifo, run) for i in range(count)]
        ids: list[str] = []
        for start in range(0, count, caps.max_send_batch):
            results = await queue.send(messages[start : start + caps.max_send_batch])
            for result in results:
                if result.error is not None:
                    raise CliError(
                        f"sent {len(ids)} of {count} test messages, then: {result.error}"
                    )
                assert result.id is not None
                ids.append(result.id)
    if inv.out.json:
        inv.out.document({"queue": queue.uri, "sent": len(ids), "ids": ids})
    else:
        for ident in ids:
            inv.out.line(ident)
        inv.out.note(f"sent {len(ids)} test message(s) to {queue.uri}")
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def register(commands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    def command(name: str, handler: Any, help: str, *, by_id: bool = False) -> Any:
        parser = commands.add_parser(name, help=help, description=help, parents=[common])
        parser.add_argument(
            "queue", metavar="QUEUE_URI", help="sqs://name, an SQS URL, dynamodb://…"
        )
        if by_id:
            parser.add_argument("id", metavar="MESSAGE_ID")
        parser.set_defaults(handler=handler)
        return parser

    command("qstat", qstat, "counts of the queue (visible, in flight, delayed, dead letters)")
    parser = command("dlq", dlq, "counts of the queue's dead-letter queue")
    parser.add_argument(
        "--reconcile",
        action="store_true",
        help="record tracked messages found in the DLQ as failed (a task left uncounted "
        "by a consumer that died on its last receive); sqs:// only, needs --table",
    )
    parser = command("ls", ls, "list every message (paginated; --dlq: the dead letters)")
    parser.add_argument("--dlq", action="store_true", help="list the dead letters instead")
    parser.add_argument("--page-size", type=positive, default=100, help="messages per request")
    parser.add_argument("--limit", type=positive, default=None, help="stop after N messages")
    command("get", get, "show one message by id", by_id=True)
    parser = command(
        "receive",
        receive,
        "receive messages and show them: a real receive (receive counts go up); they are "
        "visible again afterwards unless --ack deletes them",
    )
    parser.add_argument("-n", "--count", type=positive, default=10, help="at most N (default 10)")
    parser.add_argument(
        "--wait", type=seconds, default=1.0, help="long-poll seconds for the first (default 1)"
    )
    parser.add_argument("--ack", action="store_true", help="delete what was received")
    command("delete", by_id, "delete one message, whatever its state", by_id=True)
    command("fail", by_id, "count a failed receive of one message", by_id=True)
    parser = command("invalid", by_id, "move one message to the dead-letter queue", by_id=True)
    parser.add_argument("--reason", default="", help="why (kept with the dead letter)")
    command("reset", by_id, "make one message ready again with receive count 0", by_id=True)
    parser = command("purge", purge, "delete every message (--dlq: every dead letter)")
    parser.add_argument("--dlq", action="store_true", help="purge the dead-letter queue")
    parser = command("redrive", redrive, "move dead letters back (cluster tasks: cluster redrive)")
    parser.add_argument("id", nargs="?", metavar="MESSAGE_ID", help="one dead letter")
    parser.add_argument("--all", action="store_true", help="every dead letter")
    parser = command("enqueue-test", enqueue_test, "send test messages")
    parser.add_argument(
        "-n",
        "--count",
        type=up_to(100_000),
        default=1,
        help="how many (default 1, at most 100,000)",
    )
    parser.add_argument("--body", default=None, help='body text (default {"test": i, "run": …})')

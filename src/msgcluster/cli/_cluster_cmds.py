"""``msgcluster cluster ...``: read and steer message clusters through :class:`Client`."""

from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from .._aws_errors import aws_errors
from .._client import Client
from .._clusterkeys import CLUSTER_SORT_KEY, cluster_id_of
from .._errors import RecordNotFoundError, ValidationError
from .._itemcodec import decode_item
from .._schemas import (
    CANCELLED,
    MessageClusterRecord,
    MessageRecord,
    Status,
    StatusCode,
    Statuses,
    check_int,
    parse_cluster_status,
    parse_cluster_statuses,
)
from ._common import (
    EXIT_CLUSTER_ERROR,
    EXIT_OK,
    EXIT_TIMEOUT,
    Invocation,
    positive,
    seconds,
)
from ._render import ClusterProgress

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator

__all__ = ["cluster_doc", "register"]

_MIN_INTERVAL: Final = 0.05  # seconds between polls, at least


@contextlib.asynccontextmanager
async def client(inv: Invocation) -> AsyncIterator[Client]:
    """A Client on the invocation's settings, all of them (per-service endpoints
    from ``AWS_ENDPOINT_URL_<SERVICE>`` included)."""
    async with Client._from_settings(inv.settings) as mc:
        yield mc


def cluster_doc(record: MessageClusterRecord) -> dict[str, Any]:
    return {
        "id": record.id or cluster_id_of(record.key),
        "pk": record.pk,
        "rk": record.rk,
        "status": record.status.value,
        "status_code": int(record.status_code),
        "cancelled": record.cancelled,
        "total": record.total,
        "completed": record.completed,
        "failed": record.failed,
        "in_progress": record.in_progress,
        "sealed": record.sealed,
        "shards": record.shards,
        "tolerated_failures": record.tolerated_failures,
        "tolerated_failure_rate": record.tolerated_failure_rate,
        "url": record.url,
        "completion_queue_url": record.completion_queue_url,
        "meta": record.meta,
        "started_at": record.started_at,
        "updated_at": record.updated_at,
        "completed_at": record.completed_at,
        "cancelled_at": record.cancelled_at,
        "callback_status": record.callback_status.value if record.callback_status else None,
        "callback_attempts": record.callback_attempts,
        "callback_error": record.callback_error,
        "callback_at": record.callback_at,
        "errors": [msgspec.to_builtins(e) for e in record.error],
    }


def _status_text(record: MessageClusterRecord) -> str:
    return CANCELLED if record.cancelled else record.status.value


# --------------------------------------------------------------------------- status, watch


async def status(inv: Invocation) -> int:
    async with client(inv) as mc:
        record = await mc.get_message_cluster(inv.args.key, consistent_read=True)
    doc = cluster_doc(record)
    if inv.out.json:
        inv.out.document(doc)
    else:  # spelled as `cluster ls` and `watch` print it: CANCELLED for a cancelled one
        shown = doc | {"status": _status_text(record)}
        rows = [(name, value) for name, value in shown.items() if name not in ("pk", "rk")]
        inv.out.fields(rows, title=f"cluster {doc['id']}")
    return EXIT_OK


def outcome_of(record: MessageClusterRecord) -> str:
    if record.cancelled:
        return "cancelled"
    if record.status_code == StatusCode.COMPLETE:
        return "complete"
    if record.status_code >= StatusCode.ERROR:
        return "error"
    return "timeout"


async def watch(inv: Invocation) -> int:
    interval: float = max(inv.args.interval, _MIN_INTERVAL)
    timeout: float | None = inv.args.timeout
    started = anyio.current_time()
    async with client(inv) as mc:
        ident = cluster_id_of(inv.args.key)
        with ClusterProgress(inv.out, f"cluster {ident[:8]}") as bar:
            while True:
                record = await mc.get_message_cluster(inv.args.key, consistent_read=True)
                bar.update(
                    status=_status_text(record),
                    done=record.completed + record.failed,
                    total=record.total,
                    detail=f"{record.completed} complete, {record.failed} failed",
                )
                if record.done:
                    break
                elapsed = anyio.current_time() - started
                if timeout is not None and elapsed >= timeout:
                    break
                wait = interval if timeout is None else min(interval, timeout - elapsed)
                await anyio.sleep(wait)
    outcome = outcome_of(record)
    doc = {**cluster_doc(record), "outcome": outcome}
    if inv.out.json:
        inv.out.document(doc)
    else:
        inv.out.line(
            f"cluster {doc['id']}: {outcome} ({record.completed}/{record.total} complete, "
            f"{record.failed} failed)"
        )
    if outcome == "complete":
        return EXIT_OK
    return EXIT_TIMEOUT if outcome == "timeout" else EXIT_CLUSTER_ERROR


# --------------------------------------------------------------------------- ls


class ScanCost(msgspec.Struct):
    requests: int = 0
    scanned_items: int = 0
    read_capacity_units: float | None = None


async def scan_clusters(
    mc: Client, *, status: Statuses | None, page_size: int, cost: ScanCost
) -> AsyncGenerator[MessageClusterRecord, None]:
    """Every cluster record of the table: a paginated Scan filtered on the cluster
    sort key. It reads every item of the table (the filter applies after the
    read), so it costs about table size / 4 KB read units (eventually
    consistent: half that)."""
    table = mc.settings.table
    check_int("page_size", page_size, 1, why="items per DynamoDB Scan page")
    values: dict[str, Any] = {":rk": {"S": CLUSTER_SORT_KEY}}
    filters = "rk = :rk"
    names: dict[str, str] = {}
    if status is not None:
        either = []
        for n, wanted in enumerate(parse_cluster_statuses(status)):
            if wanted == CANCELLED:
                either.append("statusCode = :stopped")
                values[":stopped"] = {"N": str(int(StatusCode.STOPPED))}
            else:  # ERROR includes cancelled clusters, as stored
                either.append(f"#s = :s{n}")
                names["#s"] = "status"
                values[f":s{n}"] = {"S": str(wanted)}
        filters += f" AND ({' OR '.join(either)})"
    request: dict[str, Any] = {
        "TableName": table,
        "FilterExpression": filters,
        "ExpressionAttributeValues": values,
        "Limit": page_size,
        "ReturnConsumedCapacity": "TOTAL",
    }
    if names:
        request["ExpressionAttributeNames"] = names
    while True:
        with aws_errors(resource=table):
            response = await mc.dynamodb.scan(**request)
        cost.requests += 1
        cost.scanned_items += int(response.get("ScannedCount", 0))
        units = response.get("ConsumedCapacity", {}).get("CapacityUnits")
        if units is not None:
            cost.read_capacity_units = (cost.read_capacity_units or 0.0) + float(units)
        for item in response.get("Items", []):
            yield decode_item(item, MessageClusterRecord)
        last = response.get("LastEvaluatedKey")
        if not last:
            return
        request["ExclusiveStartKey"] = last


async def _live(mc: Client, record: MessageClusterRecord) -> MessageClusterRecord | None:
    """Counts summed over the shards for a running cluster (the stored item
    counts closed shards only); None if it vanished meanwhile."""
    if record.done and record.sealed and record.shards_open <= 0:
        return record
    try:
        return await mc.get_message_cluster(record.key)
    except RecordNotFoundError:
        return None


def _status_arg(text: str) -> Status | str:
    """A status by name or value, any case (``in_progress``, ``"IN PROGRESS"``,
    ``error``), or ``cancelled``: the spelling ``cluster ls`` prints."""
    try:
        return parse_cluster_status(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def ls(inv: Invocation) -> int:
    limit: int | None = inv.args.limit
    scan: bool = inv.args.scan
    cost = ScanCost()
    encode = msgspec.json.encode
    async with client(inv) as mc:
        source: Any  # an async generator either way: aclosing() ends it early
        if scan:
            source = scan_clusters(
                mc, status=inv.args.status, page_size=inv.args.page_size, cost=cost
            )
        else:
            source = mc.list_clusters(status=inv.args.status, page_size=inv.args.page_size)
        async with contextlib.aclosing(source) as records:
            count = await _write_clusters(inv, mc, records, limit)
    if inv.out.json:
        tail: dict[str, Any] = {"count": count, "source": "scan" if scan else "index"}
        if scan:
            tail["cost"] = cost
        inv.out.write("]," + encode(tail).decode()[1:] + "\n")
    elif scan:
        units = "" if cost.read_capacity_units is None else f", {cost.read_capacity_units:g} RCU"
        inv.out.note(
            f"{count} cluster(s); scanned {cost.scanned_items} item(s) of table "
            f"{inv.settings.table} in {cost.requests} request(s){units}"
        )
    else:
        inv.out.note(f"{count} cluster(s), from the cluster index of table {inv.settings.table}")
    return EXIT_OK


async def _write_clusters(
    inv: Invocation, mc: Client, records: AsyncIterator[MessageClusterRecord], limit: int | None
) -> int:
    """Stream the listing (a JSON array, or table rows); how many were written."""
    encode = msgspec.json.encode
    writer = None
    if inv.out.json:
        inv.out.write(encode({"table": mc.settings.table}).decode()[:-1] + ',"clusters":[')
    else:
        writer = inv.out.table_writer(
            ["ID", "STATUS", "TOTAL", "COMPLETED", "FAILED", "STARTED", "CALLBACK"]
        )
    count = 0
    async for stored in records:
        if limit is not None and count >= limit:
            break
        record = await _live(mc, stored) if inv.args.live else stored
        if record is None:
            continue
        if writer is None:
            inv.out.write(("," if count else "") + encode(cluster_doc(record)).decode())
        else:
            writer.add(
                [
                    record.id or cluster_id_of(record.key),
                    _status_text(record),
                    record.total,
                    record.completed,
                    record.failed,
                    record.started_at,
                    record.callback_status.value if record.callback_status else None,
                ]
            )
        count += 1
    if writer is not None:
        writer.close()
    return count


# --------------------------------------------------------------------------- cancel, redrive


async def cancel(inv: Invocation) -> int:
    async with client(inv) as mc:
        record = await mc.cancel_message_cluster(inv.args.key)
    doc = cluster_doc(record)
    if inv.out.json:
        inv.out.document(doc)
    else:
        inv.out.line(
            f"cancelled cluster {doc['id']}: {record.completed}/{record.total} complete; "
            "consumers skip its remaining tasks"
        )
    return EXIT_OK


async def failed(inv: Invocation) -> int:
    """The cluster's failed tasks, each with its last recorded error."""
    limit: int | None = inv.args.limit
    docs: list[dict[str, Any]] = []
    async with client(inv) as mc:
        tasks: Any = mc.failed_tasks(inv.args.key)  # an async generator: aclosing ends it early
        async with contextlib.aclosing(tasks):
            async for task in tasks:
                docs.append(_failed_doc(task))
                if limit is not None and len(docs) >= limit:
                    break
    if inv.out.json:
        inv.out.document({"id": cluster_id_of(inv.args.key), "failed": docs, "count": len(docs)})
        return EXIT_OK
    rows = [[d["task"], d["message_id"], d["updated_at"], d["last_error"]] for d in docs]
    inv.out.table(["TASK", "MESSAGE ID", "FAILED AT", "LAST ERROR"], rows)
    inv.out.note(f"{len(docs)} failed task(s); `msgcluster cluster redrive` sends them again")
    return EXIT_OK


def _failed_doc(task: MessageRecord) -> dict[str, Any]:
    last = task.error[-1] if task.error else None
    text = "" if last is None else (f"{last.type}: {last.message}" if last.type else last.message)
    return {
        "task": task.rk,
        "key": f"{task.pk}|{task.rk}",
        "message_id": task.id,
        "updated_at": task.updated_at,
        "receives": task.consumption_count,
        "last_error": " ".join(text.split())[:100],
        "errors": [msgspec.to_builtins(e) for e in task.error],
    }


async def redrive(inv: Invocation) -> int:
    async with client(inv) as mc:
        count = await mc.redrive_failed(inv.args.key)
    ident = cluster_id_of(inv.args.key)
    if inv.out.json:
        inv.out.document({"id": ident, "redriven": count})
    else:
        inv.out.line(f"sent {count} failed task(s) of cluster {ident} again")
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def register(commands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    group = commands.add_parser(
        "cluster",
        help="message clusters: status, watch, ls, failed, cancel, redrive",
        description="Read and steer message clusters (in --table).",
        parents=[common],
    )
    sub = group.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)

    def command(name: str, handler: Any, help: str, *, key: bool = True) -> Any:
        parser = sub.add_parser(name, help=help, description=help, parents=[common])
        if key:
            parser.add_argument("key", metavar="CLUSTER", help="cluster id (or SQSMessage$<id>)")
        parser.set_defaults(handler=handler)
        return parser

    command("status", status, "the cluster record with live counts")
    parser = command("watch", watch, "a live progress bar until the cluster is final")
    parser.add_argument("--interval", type=seconds, default=1.0, help="seconds between polls")
    parser.add_argument("--timeout", type=seconds, default=None, help="give up after N seconds")
    parser = command("ls", ls, "list clusters, newest first (the table's cluster index)", key=False)
    parser.add_argument(
        "--status",
        type=_status_arg,
        action="append",
        default=None,
        help="only this status (repeatable: any of them); CANCELLED for cancelled clusters",
    )
    parser.add_argument("--limit", type=positive, default=None, help="stop after N clusters")
    parser.add_argument("--page-size", type=positive, default=100, help="items per request")
    parser.add_argument(
        "--scan",
        action="store_true",
        help="Scan the whole table instead (finds clusters created before the index existed)",
    )
    parser.add_argument(
        "--no-live",
        dest="live",
        action="store_false",
        help="show stored counts (no extra reads for running clusters)",
    )
    command("cancel", cancel, "stop a running cluster (no completion callback)")
    parser = command("failed", failed, "the cluster's failed tasks with their errors")
    parser.add_argument("--limit", type=positive, default=None, help="stop after N tasks")
    command("redrive", redrive, "send the cluster's failed tasks again")

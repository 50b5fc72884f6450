"""Keep moto's TransactWriteItems cost flat in the table's size.

moto (5.2.x) backs up a transaction by ``copy.deepcopy`` of every table the
transaction touches, once per transaction item, so a 12-item transaction on
a table holding a 2,000-task cluster copies the whole table 12 times (~0.4 s
per call on the development machine, growing with every task). Cluster
completion is one transaction per receive batch, so tests and benchmarks on
the embedded local AWS would measure moto's copying, not msgcluster.

The patch wraps ``DynamoDBBackend.transact_write_items``: while it runs, a
table deep-copies to itself (so moto's own "backup" is free and its "restore"
a no-op), and the wrapper snapshots just the items the transaction names and
puts them back if moto raises. The semantics (conditions, cancellation
reasons, all-or-nothing) stay moto's. Every DynamoDB request is also
serialized: moto's backend is not thread-safe, and concurrent consumers on
the threaded server could otherwise lose acknowledged writes. Runs only in the local server's child
process; the version range is checked like the SQS patch's.
"""

from __future__ import annotations

import copy
import importlib
import threading
from typing import Any, Final

__all__ = ["apply", "is_applied"]

_MARKER: Final = "__msgcluster_transact_patch__"
_lock = threading.RLock()


def _key_of(table: Any, op_type: str, op: dict[str, Any]) -> dict[str, Any] | None:
    source = op.get("Item") if op_type == "Put" else op.get("Key")
    if not isinstance(source, dict):
        return None
    names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
    if any(name not in source for name in names):
        return None
    return {name: source[name] for name in names}


def _snapshot(
    backend: Any, transact_items: list[dict[str, Any]]
) -> list[tuple[Any, Any, Any, Any]]:
    saved: list[tuple[Any, Any, Any, Any]] = []
    for entry in transact_items:
        if not isinstance(entry, dict) or len(entry) != 1:
            continue
        op_type, op = next(iter(entry.items()))
        if not isinstance(op, dict) or op.get("TableName") not in backend.tables:
            continue
        table = backend.tables[op["TableName"]]
        key = _key_of(table, op_type, op)
        if key is None:
            continue
        hash_key, range_key = backend.get_keys_value(table, key)
        item = table.get_item(hash_key, range_key)
        saved.append((table, hash_key, range_key, copy.deepcopy(item)))
    return saved


def _restore(saved: list[tuple[Any, Any, Any, Any]]) -> None:
    for table, hash_key, range_key, item in reversed(saved):
        if table.has_range_key:
            bucket = table.items[hash_key]
            if item is None:
                bucket.pop(range_key, None)
                if not bucket:
                    table.items.pop(hash_key, None)
            else:
                bucket[range_key] = item
        elif item is None:
            table.items.pop(hash_key, None)
        else:
            table.items[hash_key] = item


def _wrap(original: Any, table_cls: type) -> Any:
    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        with _lock:
            saved = _snapshot(self, transact_items)
            table_cls.__deepcopy__ = lambda table, memo: table  # type: ignore[attr-defined]
            try:
                return original(self, transact_items)  # type: ignore[no-any-return]
            except BaseException:
                _restore(saved)
                raise
            finally:
                del table_cls.__deepcopy__  # type: ignore[attr-defined]

    transact_write_items.__wrapped__ = original  # type: ignore[attr-defined]
    return transact_write_items


def _serialize(original: Any) -> Any:
    # moto's DynamoDB backend is not thread-safe (the threaded server runs
    # requests concurrently; a condition check and its write can interleave
    # with another request's), so every DynamoDB request runs under one lock,
    # which is what DynamoDB's per-item atomicity looks like from outside.
    def call_action(self: Any) -> Any:
        with _lock:
            return original(self)

    call_action.__wrapped__ = original  # type: ignore[attr-defined]
    return call_action


def is_applied() -> bool:
    try:
        models = importlib.import_module("moto.dynamodb.models")
    except ImportError:
        return False
    return bool(getattr(models.DynamoDBBackend, _MARKER, False))


def apply() -> None:
    """Patch moto's DynamoDB backend in this process (idempotent)."""
    with _lock:
        models = importlib.import_module("moto.dynamodb.models")
        table_module = importlib.import_module("moto.dynamodb.models.table")
        backend_cls, table_cls = models.DynamoDBBackend, table_module.Table
        if getattr(backend_cls, _MARKER, False):
            return
        original = backend_cls.__dict__.get("transact_write_items")
        problems = []
        if original is None or "copy.deepcopy" not in _source(original):
            problems.append("DynamoDBBackend.transact_write_items no longer deep-copies tables")
        for name in ("get_keys_value", "tables"):
            if not hasattr(backend_cls, name) and name != "tables":
                problems.append(f"DynamoDBBackend.{name} is missing")
        if "__deepcopy__" in table_cls.__dict__:
            problems.append("moto.dynamodb Table defines __deepcopy__ itself")
        if problems:
            raise RuntimeError(
                "msgcluster cannot patch moto's DynamoDB backend: " + "; ".join(problems)
            )
        backend_cls.transact_write_items = _wrap(original, table_cls)
        handler_cls = importlib.import_module("moto.dynamodb.responses").DynamoHandler
        handler_cls.call_action = _serialize(handler_cls.call_action)
        setattr(backend_cls, _MARKER, True)


def _source(func: Any) -> str:
    import inspect

    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return ""

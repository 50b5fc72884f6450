"""A message cluster's shared "globals": one JSON object in S3.

Every task of a cluster can read the globals, and any of them can update them,
so updates race. ``update_globals`` with a function is an optimistic
compare-and-swap on the object's ETag: read the body and its ETag, compute the
new value, ``PutObject`` with ``IfMatch=<etag>``. If another writer got there
first, S3 answers 412 ``PreconditionFailed`` (or 409
``ConditionalRequestConflict`` when two conditional writes overlap), nothing
is written, and the update is retried on the new value after a full-jitter
backoff. So concurrent read-modify-write updates never lose one another, with
no lock to take, expire or leak. A plain value is written unconditionally: the
last writer wins.

Each write carries a random id in the object's metadata. When a write applied
but its response was lost, botocore retries it and the retry gets 412; reading
the object back and finding our own id there tells the update it already
applied, so the function is not applied twice. (If yet another writer updated
the object in the short window between the lost response and the retry, this
cannot be told apart from a lost race; the update is then applied again.)

Reads go through ``Context.globals_cache`` (S3 key -> ETag and body) but are
always revalidated: ``GetObject`` with ``IfNoneMatch=<cached etag>`` answers
304 Not Modified when nothing changed. That costs a request, but no body
transfer, and a write by any other process is seen by the next read; a cache
that is trusted without asking S3 could not promise that.
"""

from __future__ import annotations

import functools
import inspect
import uuid
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import msgspec

from .._aws_errors import aws_errors
from .._batching import Backoff
from .._errors import AwsError, GlobalsConflictError, ObjectNotFoundError, ValidationError
from .._json import encode_json
from .._schemas import KEY_PREFIX, S3Pointer, check_int

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import PutObjectRequestTypeDef

    from .._context import Context

__all__ = ["create_globals", "get_globals", "globals_key", "update_globals"]

_encoder: Final = msgspec.json.Encoder()
# x-amz-meta-msgcluster-writer: who wrote this version (see the module docstring).
_WRITER_META: Final = "msgcluster-writer"
_CONTENT_TYPE: Final = "application/json"
_CREATE_ATTEMPTS: Final = 8
_BACKOFF_BASE: Final = 0.02
_BACKOFF_CAP: Final = 1.0


class _Current(NamedTuple):
    etag: str
    body: bytes
    writer: str | None  # None when unknown (a 304 answer carries no metadata)


def globals_key(cluster_id: str) -> str:
    """The S3 key of a cluster's globals (under the prefix the lifecycle rule expires)."""
    return f"{KEY_PREFIX}{cluster_id}-globals.json"


async def create_globals(ctx: Context, cluster_id: str, value: Any) -> S3Pointer:
    """Store ``value`` as the globals of cluster ``cluster_id``; return where they live.

    The write is create-only (``IfNoneMatch="*"``). If the object already
    exists, a crashed creation is being resumed with the same cluster id: the
    existing object is kept (tasks may have updated it since) and its pointer
    returned, so ``value`` is ignored.
    """
    if not isinstance(cluster_id, str) or not cluster_id:
        raise ValidationError(f"cluster_id must be a non-empty string, got {cluster_id!r:.200}")
    bucket = ctx.settings.require_bucket("cluster globals")
    pointer = S3Pointer(bucket=bucket, key=globals_key(cluster_id))
    data = _encode(value, pointer)
    backoff = Backoff(attempts=_CREATE_ATTEMPTS, base=_BACKOFF_BASE, cap=_BACKOFF_CAP)
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            etag = await _put(ctx, pointer, data, uuid.uuid4().hex, if_none_match="*")
        except AwsError as exc:
            if _is_precondition_failed(exc):
                try:
                    current = await _read(ctx, pointer, revalidate=True)
                except ObjectNotFoundError:
                    # Deleted between the two calls: create it after all.
                    await backoff.sleep(attempt)
                    continue
                return S3Pointer(bucket=bucket, key=pointer.key, size=len(current.body))
            if _is_write_conflict(exc):
                await backoff.sleep(attempt)
                continue
            raise
        ctx.globals_cache.put(pointer.key, etag, data)
        return S3Pointer(bucket=bucket, key=pointer.key, size=len(data))
    raise GlobalsConflictError(
        f"create_globals gave up on {_where(pointer)} after {_CREATE_ATTEMPTS} attempts: "
        "concurrent conditional writes kept conflicting"
    )


async def get_globals(ctx: Context, pointer: S3Pointer, type: Any = Any) -> Any:
    """The cluster's globals decoded as ``type`` (revalidated against S3 on every call)."""
    current = await _read(ctx, pointer, revalidate=True)
    return _decode(current.body, type, pointer)


async def update_globals(
    ctx: Context,
    pointer: S3Pointer,
    value_or_fn: Any,
    type: Any = Any,
    *,
    max_attempts: int = 64,
) -> Any:
    """Replace the cluster's globals; return the new value.

    ``value_or_fn`` callable (a function or an async function): it gets the
    current globals, decoded as ``type``, and returns the new value; the write
    is a compare-and-swap on the ETag, retried (re-reading the globals and
    calling the function again) while other writers win, up to
    ``max_attempts`` times, then :class:`GlobalsConflictError`. The function
    may therefore run more than once and should have no side effects. If it
    raises, the exception propagates unchanged and nothing is written.

    Anything else is the new value, written unconditionally: last writer wins,
    and ``type`` is not used.
    """
    check_int("max_attempts", max_attempts, 1, 10_000)
    if not callable(value_or_fn):
        data = _encode(value_or_fn, pointer)
        etag = await _put(ctx, pointer, data, uuid.uuid4().hex)
        ctx.globals_cache.put(pointer.key, etag, data)
        return value_or_fn

    backoff = Backoff(attempts=max_attempts, base=_BACKOFF_BASE, cap=_BACKOFF_CAP)
    attempts = 0
    pending: tuple[str, Any] | None = None  # (writer id, value) of the last refused write
    while True:
        # After a refused write, read without the cache: the 304 path has no metadata.
        current = await _read(ctx, pointer, revalidate=pending is None)
        if pending is not None and current.writer == pending[0]:
            return pending[1]  # our write applied; its retry was the one refused
        if attempts >= max_attempts:
            raise GlobalsConflictError(
                f"update_globals gave up on {_where(pointer)} after {max_attempts} attempts: "
                "other writers changed the globals between every read and write"
            )
        attempts += 1
        new = value_or_fn(_decode(current.body, type, pointer))
        if inspect.isawaitable(new):
            new = await new
        data = _encode(new, pointer)
        writer = uuid.uuid4().hex
        try:
            etag = await _put(ctx, pointer, data, writer, if_match=current.etag)
        except AwsError as exc:
            if not (_is_precondition_failed(exc) or _is_write_conflict(exc)):
                raise
            ctx.globals_cache.discard(pointer.key)
            pending = (writer, new)
            await backoff.sleep(attempts - 1)
            continue
        ctx.globals_cache.put(pointer.key, etag, data)
        return new


async def _read(ctx: Context, pointer: S3Pointer, *, revalidate: bool) -> _Current:
    """The object's ETag and body: from the cache if S3 says it is current (304)."""
    cached = ctx.globals_cache.get(pointer.key) if revalidate else None
    try:
        with aws_errors(resource=_where(pointer)):
            if cached is None:
                response = await ctx.s3.get_object(Bucket=pointer.bucket, Key=pointer.key)
            else:
                response = await ctx.s3.get_object(
                    Bucket=pointer.bucket, Key=pointer.key, IfNoneMatch=cached[0]
                )
            async with response["Body"] as stream:
                body = await stream.read()
    except ObjectNotFoundError as exc:
        ctx.globals_cache.discard(pointer.key)
        raise _gone(exc, pointer) from exc
    except AwsError as exc:
        if cached is not None and _is_not_modified(exc):
            return _Current(etag=cached[0], body=cached[1], writer=None)
        raise
    etag = response["ETag"]
    ctx.globals_cache.put(pointer.key, etag, body)
    return _Current(etag=etag, body=body, writer=response.get("Metadata", {}).get(_WRITER_META))


async def _put(
    ctx: Context,
    pointer: S3Pointer,
    data: bytes,
    writer: str,
    *,
    if_match: str | None = None,
    if_none_match: str | None = None,
) -> str:
    """PutObject (conditional if asked); the new ETag."""
    request: PutObjectRequestTypeDef = {
        "Bucket": pointer.bucket,
        "Key": pointer.key,
        "Body": data,
        "ContentType": _CONTENT_TYPE,
        "Metadata": {_WRITER_META: writer},
    }
    if if_match is not None:
        request["IfMatch"] = if_match
    if if_none_match is not None:
        request["IfNoneMatch"] = if_none_match
    try:
        with aws_errors(resource=_where(pointer)):
            response = await ctx.s3.put_object(**request)
    except ObjectNotFoundError as exc:  # IfMatch on an object that is gone
        ctx.globals_cache.discard(pointer.key)
        raise _gone(exc, pointer) from exc
    return response["ETag"]


def _is_not_modified(exc: AwsError) -> bool:
    # botocore has no body to parse for a 304: the code is the status, "304".
    return exc.status == 304 or exc.code in {"304", "NotModified"}


def _is_precondition_failed(exc: AwsError) -> bool:
    return exc.status == 412 or exc.code == "PreconditionFailed"


def _is_write_conflict(exc: AwsError) -> bool:
    # S3 answers 409 when a conditional write overlaps another write of the key.
    return exc.code in {"ConditionalRequestConflict", "409"}


def _encode(value: Any, pointer: S3Pointer) -> bytes:
    return encode_json(value, f"cluster globals ({_where(pointer)})")


@functools.lru_cache(maxsize=256)
def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


def _decode(body: bytes, type_: Any, pointer: S3Pointer) -> Any:
    try:
        try:
            decoder = _decoder(type_)
        except TypeError:  # unhashable type annotation: decode without caching
            try:
                return msgspec.json.decode(body, type=type_)
            except TypeError:
                raise ValidationError(
                    f"type={_type_name(type_)} is not a type msgspec can decode into (a "
                    "Struct, dataclass, dict, list, str, int... or Any)"
                ) from None
        return decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        raise ValidationError(
            f"cluster globals {_where(pointer)} do not match {_type_name(type_)}: {exc}"
        ) from exc


def _type_name(type_: Any) -> str:
    # A class by name; a generic alias or union as written (list[int], not list).
    return type_.__name__ if isinstance(type_, type) else repr(type_)


def _where(pointer: S3Pointer) -> str:
    return f"s3://{pointer.bucket}/{pointer.key}"


def _gone(exc: ObjectNotFoundError, pointer: S3Pointer) -> ObjectNotFoundError:
    return ObjectNotFoundError(
        f"cluster globals {_where(pointer)} are gone (expired after the retention period, "
        "or deleted)",
        code=exc.code,
        operation=exc.operation,
        status=exc.status,
    )

"""The translation of botocore (and socket) errors into msgcluster's exception
tree (:mod:`msgcluster._errors`, which re-exports everything public here).

Third-party exceptions are translated here and only here (:func:`translate`,
or the :func:`aws_errors` block), always chained (``raise ... from exc``) so
the botocore detail stays visible; text from AWS is shown through
:func:`redact`.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from . import _redaction
from ._errors import (
    AccessDeniedError,
    AwsConnectionError,
    AwsError,
    AwsValidationError,
    BucketNotFoundError,
    ConditionFailedError,
    ConfigurationError,
    MsgclusterError,
    ObjectNotFoundError,
    QueueNotFoundError,
    ResourceNotFoundError,
    TableNotFoundError,
    ThrottledError,
    TransactionCanceledError,
    TransactionConflictError,
    ValidationError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["aws_errors", "is_definitely_not_applied", "is_sender_fault", "redact", "translate"]


_NOT_FOUND: dict[str, type[ResourceNotFoundError]] = {
    "AWS.SimpleQueueService.NonExistentQueue": QueueNotFoundError,
    "QueueDoesNotExist": QueueNotFoundError,
    "NoSuchBucket": BucketNotFoundError,
    "NoSuchKey": ObjectNotFoundError,
}
_THROTTLED = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "SlowDown",
        "TooManyRequestsException",
        "KMSThrottlingException",
    }
)
_DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "MissingAuthenticationToken",
    }
)
_INVALID = frozenset(
    {
        "ValidationException",
        "ValidationError",
        "InvalidParameterValue",
        "InvalidParameterCombination",
        "InvalidAttributeValue",
        "InvalidAttributeName",
        "InvalidMessageContents",
        "MissingParameter",
        "InvalidBatchEntryId",
        "BatchEntryIdsNotDistinct",
        "BatchRequestTooLong",
        "TooManyEntriesInBatchRequest",
        "EmptyBatchRequest",
        "InvalidBucketName",
        "EntityTooLarge",
        "ItemCollectionSizeLimitExceededException",
        "MessageTooLong",
    }
)


def translate(exc: BaseException, *, resource: str = "") -> MsgclusterError:
    """Map a botocore exception to the msgcluster error a user can act on."""
    if isinstance(exc, MsgclusterError):
        return exc
    if isinstance(exc, ClientError):
        return _translate_client_error(exc, resource)
    if isinstance(exc, BotoCoreError):
        name = type(exc).__name__
        text = redact(str(exc))
        if name in {"NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError"}:
            return AccessDeniedError(
                f"AWS credentials are missing ({text}): set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a profile, or a role",
                code=name,
            )
        if isinstance(exc, EndpointConnectionError):
            return AwsConnectionError(f"{text}: {_UNREACHABLE}", code=name)
        if name in _CONFIG_FILES:
            return _CONFIG_FILES[name](exc)
        if name in _NOT_CONNECTION:
            return ConfigurationError(f"{name}: {text}")
        return AwsConnectionError(f"{name}: {text}", code=name)
    if isinstance(exc, OSError | TimeoutError):
        return AwsConnectionError(
            f"{type(exc).__name__}: {redact(str(exc))}", code=type(exc).__name__
        )
    return MsgclusterError(f"{type(exc).__name__}: {redact(str(exc))}")


_UNREACHABLE = (
    "check the endpoint (endpoint_url, AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_<SERVICE>) and the "
    "region, and that the service is running and reachable"
)
# botocore errors about the configuration, not the network.
_NOT_CONNECTION = frozenset(
    {
        "NoRegionError",
        "InvalidRegionError",
        "UnknownServiceError",
        "InvalidEndpointConfigurationError",
        "UnknownEndpointError",
        "ParamValidationError",
        "InvalidConfigError",
    }
)


def _profile_not_found(exc: BotoCoreError) -> ConfigurationError:
    profile = redact(str(getattr(exc, "kwargs", {}).get("profile", "")))[:80]
    return ConfigurationError(
        f"AWS profile {profile!r} is not in the AWS config or credentials file "
        "(~/.aws/config, ~/.aws/credentials, or AWS_CONFIG_FILE / "
        "AWS_SHARED_CREDENTIALS_FILE): add it there, or set AWS_PROFILE (or pass "
        "profile=) to a profile that exists"
    )


def _config_unparsable(exc: BotoCoreError) -> ConfigurationError:
    # The path only: the file's contents may hold credentials.
    path = redact(str(getattr(exc, "kwargs", {}).get("path", "")))[:200]
    return ConfigurationError(
        f"the AWS config or credentials file {path} could not be parsed: fix its syntax "
        "([section] headers, then 'key = value' lines), or point AWS_CONFIG_FILE / "
        "AWS_SHARED_CREDENTIALS_FILE at a valid file"
    )


_CONFIG_FILES: dict[str, Callable[[BotoCoreError], ConfigurationError]] = {
    "ProfileNotFound": _profile_not_found,
    "ConfigParseError": _config_unparsable,
}
_USERINFO = re.compile(r"(?<=://)[^\s\"'@]*@")
_MAX_TEXT = 300


def redact(text: str) -> str:
    """``text`` safe to show: URL userinfo removed, an HTML page (a proxy's or
    captive portal's answer) named rather than pasted, and length capped."""
    text = _USERINFO.sub("***@", _redaction.redact(text))
    if "<html" in text.lower() or "<!doctype" in text.lower():
        return "the endpoint answered with an HTML page (is it an AWS endpoint?)"
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "..."


_PROVISION = "check the name, or create it with `msgcluster provision` (or Client.provision())"


def _translate_client_error(exc: ClientError, resource: str) -> AwsError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "") or "")
    text = redact(str(error.get("Message", "") or ""))
    operation = exc.operation_name
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    where = f" ({resource})" if resource else ""
    kw: dict[str, Any] = {"code": code, "operation": operation, "status": status}
    message = f"{operation} failed{where}: {code}: {text}".rstrip(": ")

    if code in _NOT_FOUND:
        hint = "" if _NOT_FOUND[code] is ObjectNotFoundError else f"; {_PROVISION}"
        return _NOT_FOUND[code](message + hint, **kw)
    if code == "ResourceNotFoundException":
        return TableNotFoundError(f"{message}; {_PROVISION}", **kw)
    if code in {"404", "NotFound"}:
        if operation in {"HeadBucket"}:
            return BucketNotFoundError(message, **kw)
        return ObjectNotFoundError(message, **kw)
    if code == "ConditionalCheckFailedException":
        item: Any = exc.response.get("Item")
        return ConditionFailedError(message, item=item, **kw)
    if code == "TransactionCanceledException":
        reasons: list[Any] = list(exc.response.get("CancellationReasons", []) or [])
        return TransactionCanceledError(message, reasons=reasons, **kw)
    if code == "TransactionConflictException":
        return TransactionConflictError(message, **kw)
    if code in _THROTTLED:
        return ThrottledError(message, **kw)
    if code in _DENIED:
        return AccessDeniedError(message, **kw)
    if code in _INVALID:
        return AwsValidationError(message, **kw)
    if isinstance(status, int) and status >= 500:
        return AwsConnectionError(message, **kw)
    return AwsError(message, **kw)


@contextmanager
def aws_errors(resource: str = "") -> Iterator[None]:
    """Translate botocore errors raised inside the block (chained)."""
    try:
        yield
    except (ClientError, BotoCoreError, OSError, TimeoutError) as exc:
        if isinstance(exc, MsgclusterError):
            raise
        raise translate(exc, resource=resource) from exc


def is_definitely_not_applied(exc: BaseException) -> bool:
    """True when AWS answered with an error, so the request did not apply.

    Throttling is a refusal (not applied). Connection errors and 5xx are
    ambiguous: the request may have applied.
    """
    return isinstance(exc, AwsError) and not isinstance(exc, AwsConnectionError)


def is_sender_fault(exc: BaseException) -> bool:
    """True when sending the same request again cannot succeed."""
    if isinstance(exc, ValidationError | ConfigurationError):
        return True
    return is_definitely_not_applied(exc) and not isinstance(exc, ThrottledError)

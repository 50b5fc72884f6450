"""Client settings: arguments first, then environment, then documented defaults.

Every setting is checked here, when the Client (or CLI) is built, with the
ranges AWS allows, so a bad value fails at once with a ConfigurationError
rather than later, on every send.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec

from ._aws import DEFAULT_REGION, SERVICES, check_endpoint, check_region, env_endpoints
from ._errors import ConfigurationError

__all__ = ["DEFAULT_REGION", "Settings"]

DEFAULT_TABLE: Final = "msgcluster"
SQS_MAX_MESSAGE_BYTES: Final = 262_144  # the historic SQS limit every queue accepts
SQS_MAX_BATCH_BYTES: Final = 1_048_576
RetryMode = Literal["standard", "adaptive", "legacy"]
# DynamoDB's and S3's naming rules (checked here so a typo is not a 400 later).
TableName = Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9_.-]{3,255}$")]
BucketName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
_SECRETS: Final = ("aws_secret_access_key", "aws_session_token")
_IPV4: Final = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


class Secret:
    """A secret setting: shown as ``'***'`` and not encodable (``msgspec`` or
    ``json`` of the settings cannot leak it); :meth:`reveal` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _decode_secret(type_: type, value: object) -> object:
    if type_ is Secret:
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return Secret(value)
        raise msgspec.ValidationError("expected a string")  # the value is never shown
    raise NotImplementedError


def _check_bucket(name: str | None) -> None:
    # S3's rules beyond the pattern: not an IP address, no '..', '.-' or '-.'.
    if name is None:
        return
    if _IPV4.fullmatch(name) or any(pair in name for pair in ("..", ".-", "-.")):
        raise ConfigurationError(f"invalid Client setting: bucket must be {_HINTS['bucket']}")


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Resolved configuration of a :class:`~msgcluster.Client`.

    ============================  ===========================  =====================
    setting                       environment                  default
    ============================  ===========================  =====================
    ``table``                     ``MSGCLUSTER_TABLE``         ``"msgcluster"``
    ``bucket``                    ``MSGCLUSTER_BUCKET``        none (needed for S3)
    ``endpoint_url``              ``AWS_ENDPOINT_URL``         AWS
    ``endpoints`` (per service)   ``AWS_ENDPOINT_URL_SQS``,    ``endpoint_url``
                                  ``_DYNAMODB``, ``_S3``
    ``region``                    ``AWS_REGION``,              profile, else
                                  ``AWS_DEFAULT_REGION``       ``us-east-1``
    ``concurrency``                                            32 (1-1000)
    ``retry_mode``                                             ``"standard"``
    ``max_attempts``                                           8 (1-50)
    ``retention_days``                                         30 (1-3650)
    ``max_message_bytes``                                      262,144 (1 KiB-1 MiB)
    ``max_meta_bytes``                                         32,768 (16-350,000)
    ``record_body_bytes``                                      1,024 (0-350,000)
    ``max_receive_count``                                      5 (1-1000, ``provision``)
    ``claim``                                                  off (``runtime._claims``)
    ``claim_seconds``                                          300 (1-43,200)
    ============================  ===========================  =====================

    An explicit ``endpoint_url`` wins over every environment endpoint; the
    config file's ``services`` sections apply when nothing else names one.
    ``repr()`` never shows the secret key or session token.
    """

    table: TableName = DEFAULT_TABLE
    bucket: BucketName | None = None
    endpoint_url: str | None = None
    endpoints: dict[str, str] = {}
    region: str | None = None
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32
    retry_mode: RetryMode = "standard"
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=50)] = 8
    retention_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30
    # Messages whose encoded envelope is larger go to S3; SQS's own cap is
    # 1 MiB for new queues, but 256 KiB is the limit every queue accepts.
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024, le=SQS_MAX_BATCH_BYTES)] = (
        SQS_MAX_MESSAGE_BYTES
    )
    # Meta lives on the record item (400 KB at most, keys and body included).
    max_meta_bytes: Annotated[int, msgspec.Meta(ge=16, le=350_000)] = 32_768
    # Bodies up to this size are copied onto the record for the console;
    # larger ones are not (every KB on an item costs a WCU per write).
    record_body_bytes: Annotated[int, msgspec.Meta(ge=0, le=350_000)] = 1_024
    max_errors: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 10
    max_receive_count: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5  # SQS's range
    # Exactly one handler run per tracked message under concurrent duplicates:
    # a leased IN PROGRESS claim per record, taken per batch (runtime._claims).
    claim: bool = False
    # The lease: longer than a handler may run (a crashed holder's claim ends then).
    claim_seconds: Annotated[int, msgspec.Meta(ge=1, le=43_200)] = 300
    aws_access_key_id: str | None = None
    aws_secret_access_key: Secret | None = None
    aws_session_token: Secret | None = None
    profile: str | None = None

    @classmethod
    def resolve(
        cls,
        *,
        table: str | None = None,
        bucket: str | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        endpoints: dict[str, str] | None = None,
        **options: object,
    ) -> Settings:
        """Arguments (None means not given), then the environment, then defaults."""
        env = os.environ
        each: dict[str, str] = {}
        if endpoint_url is None:  # an explicit endpoint_url wins over the environment's
            endpoint_url, each = env_endpoints(env)
        if endpoints is not None and not isinstance(endpoints, Mapping):
            raise ConfigurationError(
                "endpoints must be a dict of service to URL, for example "
                "{'sqs': 'http://localhost:4566'}"
            )
        for service, url in (endpoints or {}).items():
            if service not in SERVICES:
                raise ConfigurationError(
                    f"endpoints takes {', '.join(SERVICES)}; got a key {str(service)[:40]!r}"
                )
            each[service] = check_endpoint(url, f"endpoints[{service!r}]")
        values = {
            "table": env.get("MSGCLUSTER_TABLE") or DEFAULT_TABLE if table is None else table,
            "bucket": (env.get("MSGCLUSTER_BUCKET") if bucket is None else bucket) or None,
            "endpoint_url": None if endpoint_url is None else check_endpoint(endpoint_url),
            "endpoints": each,
            "region": region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            **{k: v for k, v in options.items() if v is not None},
        }
        if values["region"] is not None:
            check_region(values["region"])
        if bool(options.get("aws_access_key_id")) != bool(options.get("aws_secret_access_key")):
            raise ConfigurationError(
                "aws_access_key_id and aws_secret_access_key go together: pass both, or "
                "neither (then the environment, profile or role provides them)"
            )
        if options.get("aws_session_token") and not options.get("aws_access_key_id"):
            raise ConfigurationError(
                "aws_session_token goes with aws_access_key_id and aws_secret_access_key: "
                "pass all three, or none"
            )
        try:
            settings = msgspec.convert(values, cls, dec_hook=_decode_secret)
        except msgspec.ValidationError as exc:
            raise ConfigurationError(f"invalid Client setting: {_explain(exc)}") from None
        _check_bucket(settings.bucket)
        return settings

    def replace(self, **changes: object) -> Settings:
        """These settings with ``changes``, checked as the Client's arguments are."""
        unknown = sorted(set(changes) - set(self.__struct_fields__))
        if unknown:
            raise ConfigurationError(
                f"unknown Client setting {unknown[0][:40]!r}; valid: "
                + ", ".join(self.__struct_fields__)
            )
        values = {name: _revealed(getattr(self, name)) for name in self.__struct_fields__}
        return Settings.resolve(**(values | changes))

    def endpoint_for(self, service: str) -> str | None:
        """The endpoint set for ``service`` (None: botocore's own resolution)."""
        return self.endpoints.get(service) or self.endpoint_url

    def credentials(self) -> dict[str, str | None]:
        """Keyword arguments for create_client (empty: botocore's credential chain)."""
        if not self.aws_access_key_id:
            return {}
        return {
            "aws_access_key_id": self.aws_access_key_id,
            "aws_secret_access_key": _revealed(self.aws_secret_access_key),
            "aws_session_token": _revealed(self.aws_session_token),
        }

    def require_bucket(self, why: str) -> str:
        if not self.bucket:
            raise ConfigurationError(
                f"{why} needs an S3 bucket: pass Client(bucket=...) or set MSGCLUSTER_BUCKET"
            )
        return self.bucket

    def __rich_repr__(self) -> Any:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            yield name, "***" if name in _SECRETS and value else value


def _revealed(value: object) -> Any:
    return value.reveal() if isinstance(value, Secret) else value


_HINTS: Final = {
    "table": "a DynamoDB table name: 3-255 letters, digits, '_', '.' or '-'",
    "bucket": "an S3 bucket name: 3-63 lowercase letters, digits, '.' or '-'",
}


def _explain(exc: msgspec.ValidationError) -> str:
    """msgspec's message, with the field's rule instead of a regex, and never
    a value (a mistyped secret must not be echoed)."""
    text = str(exc)
    field = text.rpartition("$.")[2].strip("`' ")
    if field in _HINTS:
        return f"{field} must be {_HINTS[field]}"
    return text

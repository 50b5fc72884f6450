"""Client settings: arguments first, then environment, then documented defaults."""

from __future__ import annotations

import os
from typing import Final, Literal

import msgspec

from ._errors import ConfigurationError

__all__ = ["Settings"]

DEFAULT_TABLE: Final = "msgcluster"
DEFAULT_REGION: Final = "us-east-1"
SQS_MAX_MESSAGE_BYTES: Final = 262_144  # the historic SQS limit every queue accepts
SQS_MAX_BATCH_BYTES: Final = 1_048_576
RetryMode = Literal["standard", "adaptive", "legacy"]


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Resolved configuration of a :class:`~msgcluster.Client`.

    ============================  =========================  =====================
    setting                       environment                default
    ============================  =========================  =====================
    ``table``                     ``MSGCLUSTER_TABLE``       ``"msgcluster"``
    ``bucket``                    ``MSGCLUSTER_BUCKET``      none (needed for S3)
    ``endpoint_url``              ``AWS_ENDPOINT_URL``       AWS
    ``region``                    ``AWS_REGION``,            profile, else
                                  ``AWS_DEFAULT_REGION``     ``us-east-1``
    ``concurrency``                                          32
    ``retry_mode``                                           ``"standard"``
    ``max_attempts``                                         8
    ``retention_days``                                       30
    ``max_message_bytes``                                    262,144
    ``max_meta_bytes``                                       32,768
    ``record_body_bytes``                                    1,024
    ``max_receive_count``                                    5 (``provision``)
    ============================  =========================  =====================
    """

    table: str = DEFAULT_TABLE
    bucket: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    concurrency: int = 32
    retry_mode: RetryMode = "standard"
    max_attempts: int = 8
    retention_days: int = 30
    # Messages whose encoded envelope is larger go to S3; SQS's own cap is
    # 1 MiB for new queues, but 256 KiB is the limit every queue accepts.
    max_message_bytes: int = SQS_MAX_MESSAGE_BYTES
    max_meta_bytes: int = 32_768
    # Bodies up to this size are copied onto the record for the console;
    # larger ones are not (every KB on an item costs a WCU per write).
    record_body_bytes: int = 1_024
    max_errors: int = 10
    max_receive_count: int = 5
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    profile: str | None = None

    @classmethod
    def resolve(
        cls,
        *,
        table: str | None = None,
        bucket: str | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        **options: object,
    ) -> Settings:
        env = os.environ
        try:
            settings = msgspec.convert(
                {
                    "table": table or env.get("MSGCLUSTER_TABLE") or DEFAULT_TABLE,
                    "bucket": bucket or env.get("MSGCLUSTER_BUCKET") or None,
                    "endpoint_url": endpoint_url or env.get("AWS_ENDPOINT_URL") or None,
                    "region": region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
                    **{k: v for k, v in options.items() if v is not None},
                },
                cls,
            )
        except msgspec.ValidationError as exc:
            raise ConfigurationError(f"invalid Client setting: {exc}") from exc
        settings.check()
        return settings

    def check(self) -> None:
        if not self.table:
            raise ConfigurationError("table must be a non-empty DynamoDB table name")
        positive = ("concurrency", "max_attempts", "retention_days", "max_message_bytes")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_message_bytes > SQS_MAX_BATCH_BYTES:
            raise ConfigurationError("max_message_bytes cannot exceed SQS's 1 MiB limit")

    def require_bucket(self, why: str) -> str:
        if not self.bucket:
            raise ConfigurationError(
                f"{why} needs an S3 bucket: pass Client(bucket=...) or set MSGCLUSTER_BUCKET"
            )
        return self.bucket

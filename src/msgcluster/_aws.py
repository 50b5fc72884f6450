"""Creating aiobotocore clients: the one place for endpoints, regions, timeouts
and first-contact failures, shared by the Client and the queue backends.

Endpoints resolve per service, as botocore documents: an explicit per-service
endpoint, then an explicit ``endpoint_url``, then ``AWS_ENDPOINT_URL_<SERVICE>``,
then ``AWS_ENDPOINT_URL``, then the config file's ``services`` section (which
botocore reads itself). Every endpoint is checked before use: http(s) only, a
host, and never credentials (they would reach request bodies and DEBUG logs).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

from aiobotocore.config import AioConfig
from botocore.exceptions import EndpointConnectionError
from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url

from . import _redaction
from ._aws_errors import aws_errors
from ._errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from contextlib import AsyncExitStack

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_REGION",
    "SERVICES",
    "check_endpoint",
    "check_region",
    "env_endpoints",
    "open_client",
    "region_for",
]

SERVICES: Final = ("sqs", "dynamodb", "s3")
DEFAULT_REGION: Final = "us-east-1"
# Seconds to open a TCP connection: AWS answers in milliseconds, so a longer
# wait only delays the error for an endpoint that is not there.
CONNECT_TIMEOUT: Final = 3
# Attempts while an endpoint has never answered: a wrong endpoint or region
# fails in seconds rather than after every backoff of the retry policy. Once
# it has answered, connection errors get the full retries (they are blips).
FIRST_CONTACT_ATTEMPTS: Final = 2
# botocore's own rule for a region name (one DNS label).
_REGION: Final = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")
_AWS_DOMAINS: Final = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws", ".c2s.ic.gov")


def check_endpoint(url: object, what: str = "endpoint_url") -> str:
    """``url`` if it is a usable http(s) endpoint, else ConfigurationError.

    The message never repeats the URL: a malformed one may hold a secret.
    """
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"{what} must be an http(s) URL such as http://localhost:4566")
    if "@" in unquote(url):
        raise ConfigurationError(
            f"{what} must not carry credentials (user:password@): remove them and configure "
            "credentials the usual way (environment, profile, role)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{what} is not an http(s) URL with a host (for example http://localhost:4566)"
        )
    if parts.query or parts.fragment or (port is not None and not 0 < port < 65536):
        raise ConfigurationError(f"{what} takes no query, fragment or out-of-range port")
    if not (is_valid_endpoint_url(url) or is_valid_ipv6_endpoint_url(url)):
        # botocore's own test: what it would refuse later with a bare ValueError.
        raise ConfigurationError(
            f"{what} has a host botocore refuses: use letters, digits, '-' and '.', "
            "an IPv4 address or an [IPv6] address"
        )
    return url


def check_region(region: object) -> str:
    """``region`` if botocore would accept its name, else ConfigurationError."""
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise ConfigurationError(
            "region must be an AWS region name such as us-east-1 (letters, digits and '-')"
        )
    return region


def env_endpoints(env: Mapping[str, str] | None = None) -> tuple[str | None, dict[str, str]]:
    """The endpoints set in the environment: ``AWS_ENDPOINT_URL`` and the
    ``AWS_ENDPOINT_URL_<SERVICE>`` of each service msgcluster uses, checked."""
    env = os.environ if env is None else env
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None, {}
    each = {}
    for service in SERVICES:
        name = f"AWS_ENDPOINT_URL_{service.upper()}"
        if env.get(name):
            each[service] = check_endpoint(env[name], name)
    common = env.get("AWS_ENDPOINT_URL") or None
    return (check_endpoint(common, "AWS_ENDPOINT_URL") if common else None), each


def region_for(session: Any, region: str | None) -> str:
    """The region to use: the given one, the profile's or environment's, else us-east-1.

    The same default everywhere (Client, queues, worker, CLI), so no path
    raises botocore's NoRegionError.
    """
    with aws_errors():  # ProfileNotFound, a malformed config file
        configured = session.get_config_variable("region")
    return check_region(region or configured or DEFAULT_REGION)


async def open_client(
    stack: AsyncExitStack,
    session: Any,
    service: str,
    *,
    config: AioConfig,
    region: str,
    endpoint: str | None = None,
    credentials: Mapping[str, str | None] | None = None,
) -> Any:
    """An aiobotocore client entered on ``stack``, failing fast on first contact.

    S3 uses path-style addressing whenever its endpoint is not AWS's own
    (moto, LocalStack, MinIO), however that endpoint was configured.
    """
    _redaction.install()
    _check_credentials(credentials)
    for name in ("aws_secret_access_key", "aws_session_token"):
        _redaction.register_secret((credentials or {}).get(name))
    kwargs: dict[str, Any] = {"region_name": region, "config": config, **(credentials or {})}
    if endpoint is not None:
        kwargs["endpoint_url"] = endpoint
    with aws_errors(), _endpoint_refused(service):  # configuration errors, typed with a hint
        if service == "s3":
            if endpoint is not None:
                custom = not _is_aws_host(endpoint)
            else:  # botocore resolves it (config file, AWS's default): ask it
                probe = await session.create_client("s3", **kwargs).__aenter__()
                custom = not _is_aws_host(probe.meta.endpoint_url)
                await probe.__aexit__(None, None, None)
            if custom:
                kwargs["config"] = config.merge(AioConfig(s3={"addressing_style": "path"}))
        client = await stack.enter_async_context(session.create_client(service, **kwargs))
    _RetryHook.install(client)
    return client


_CREDENTIAL_VARIABLES: Final = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _check_credentials(credentials: Mapping[str, str | None] | None) -> None:
    # botocore signs with them as ASCII: anything else fails deep in a request
    # with a UnicodeEncodeError (which would show the character).
    given = list((credentials or {}).items()) or [
        (name, os.environ.get(name)) for name in _CREDENTIAL_VARIABLES
    ]
    for name, value in given:
        if value is not None and not (value.isascii() and value.isprintable()):
            raise ConfigurationError(
                f"{name} holds characters that are not printable ASCII (AWS credentials "
                "are): set it again from its source"
            )


@contextlib.contextmanager
def _endpoint_refused(service: str) -> Iterator[None]:
    # An endpoint botocore resolved itself (config file ``services`` section)
    # and refuses: its ValueError would repeat the URL.
    try:
        yield
    except ValueError as exc:
        if "endpoint" in str(exc).lower():
            raise ConfigurationError(
                f"the endpoint configured for {service} (AWS config file or environment) is "
                "not a valid URL: fix it, or pass endpoint_url="
            ) from None
        # Another setting botocore read itself (AWS_MAX_ATTEMPTS=lots...): the
        # value is not repeated.
        raise ConfigurationError(
            f"botocore refused the AWS configuration for {service}: check the AWS_* "
            "environment variables (AWS_MAX_ATTEMPTS, AWS_RETRY_MODE...) and the config file"
        ) from None


def _is_aws_host(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return any(host.endswith(domain) for domain in _AWS_DOMAINS)


class _RetryHook:
    """A ``needs-retry`` hook, registered before botocore's retry handler.

    * Until the endpoint has answered once, a connection failure is retried
      only up to FIRST_CONTACT_ATTEMPTS: the hook raises it itself, which ends
      the request (botocore would back off up to its attempt limit, ~36 s for
      a host that is not there).
    * ``TransactionConflictException`` (a plain write to an item a transaction
      holds; the write did not apply) is retried with jittered backoff, as
      botocore retries throttling: it does not know this code.
    """

    def __init__(self) -> None:
        self.answered = False

    @classmethod
    def install(cls, client: Any) -> None:
        client.meta.events.register_first("needs-retry", cls())

    def __call__(
        self,
        response: Any = None,
        caught_exception: BaseException | None = None,
        attempts: int = 0,
        **_: object,
    ) -> float | None:
        if response is not None:
            self.answered = True
            if attempts < CONFLICT_ATTEMPTS and _error_code(response) == _CONFLICT:
                return float(random.uniform(0.5, 1.0) * min(1.0, 0.02 * 2**attempts))
        elif (
            not self.answered
            and isinstance(caught_exception, EndpointConnectionError)
            and attempts >= FIRST_CONTACT_ATTEMPTS
        ):
            raise caught_exception
        return None


_CONFLICT: Final = "TransactionConflictException"
# Attempts for a write that meets a transaction: holds last tens of ms.
CONFLICT_ATTEMPTS: Final = 10


def _error_code(response: Any) -> str | None:
    try:
        return str(response[1]["Error"]["Code"])
    except (LookupError, TypeError):
        return None

"""``flux-sagemaker check``: is this endpoint ready for Flux, and can these credentials use it?

Two steps. First SageMaker's control plane: ``DescribeEndpoint`` (and ``DescribeEndpointConfig``
for the instance types), JSON 1.1 over HTTPS, SigV4-signed by botocore, sent with httpx. Then
the data plane: a short Flux stream, timed until ``Connected``. Every failure becomes a
:class:`~flux_sagemaker.errors.FluxError` whose message says what to do about it.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import attrs
import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from ..core.request import parse_endpoint_url, resolve_endpoint
from ..errors import (
    AccessDeniedError,
    ConnectError,
    ExpiredTokenError,
    FluxError,
    ModelError,
    OperationError,
    TimeoutError,
    UsageError,
    ValidationError,
)

__all__ = ["EndpointReport", "control_plane_url", "describe_endpoint", "explain_stream_error"]

_TARGET_PREFIX = "SageMaker."
_CONTENT_TYPE = "application/x-amz-json-1.1"
_AUTH_ERRORS = {"UnrecognizedClientException", "InvalidSignatureException", "IncompleteSignature"}


@attrs.frozen
class EndpointReport:
    """What DescribeEndpoint (and DescribeEndpointConfig) said about an endpoint."""

    name: str
    status: str
    """``InService``, ``Creating``, ``Updating``, ``Failed``, ..."""
    variants: tuple[str, ...]
    """One description per production variant: name, instance type and count, status."""
    failure_reason: str | None = None
    config_name: str | None = None


def control_plane_url(region: str) -> str:
    """``https://api.sagemaker.{region}.{partition suffix}/``."""
    runtime_host = resolve_endpoint(region).host  # runtime.sagemaker.{region}.{suffix}
    return f"https://api.{runtime_host.removeprefix('runtime.')}/"


async def _call(
    client: httpx.AsyncClient,
    url: str,
    operation: str,
    body: dict[str, Any],
    *,
    credentials: ReadOnlyCredentials,
    region: str,
) -> dict[str, Any]:
    payload = json.dumps(body).encode()
    request = AWSRequest(
        method="POST",
        url=url,
        data=payload,
        headers={"Content-Type": _CONTENT_TYPE, "X-Amz-Target": _TARGET_PREFIX + operation},
    )
    SigV4Auth(credentials, "sagemaker", region).add_auth(request)
    host = httpx.URL(url).host
    try:
        response = await client.post(url, content=payload, headers=dict(request.headers.items()))
    except httpx.TimeoutException as exc:
        raise TimeoutError(f"{host} did not answer {operation} in time") from exc
    except httpx.HTTPError as exc:
        raise ConnectError(
            f"cannot reach {host} ({exc}): check --region and your network or proxy"
        ) from exc
    try:
        data = response.json()
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    if response.status_code == 200:
        return data
    request_id = response.headers.get("x-amzn-requestid")
    error_type = str(data.get("__type") or response.headers.get("x-amzn-errortype") or "")
    error_type = error_type.split(":")[0].rsplit("#", 1)[-1]
    message = str(data.get("message") or data.get("Message") or response.reason_phrase)
    raise _control_error(operation, error_type, message, response.status_code, request_id)


def _control_error(
    operation: str, error_type: str, message: str, status: int, request_id: str | None
) -> FluxError:
    def error(cls: type[OperationError], text: str) -> OperationError:
        return cls(text, status_code=status, error_type=error_type or None, request_id=request_id)

    if error_type == "ExpiredTokenException":
        return error(
            ExpiredTokenError,
            f"the AWS session token expired ({message}): refresh your credentials "
            "(for example 'aws sso login') and run check again",
        )
    if error_type in _AUTH_ERRORS:
        return error(
            AccessDeniedError,
            f"AWS did not accept the credentials ({message}): check the access key, the "
            "secret key and the clock of this machine",
        )
    if error_type == "AccessDeniedException" or status == 403:
        return error(
            AccessDeniedError,
            f"access denied to sagemaker:{operation} ({message}): grant this identity "
            f"sagemaker:{operation} on the endpoint",
        )
    return error(OperationError, f"{operation} failed: {message}")


async def describe_endpoint(
    name: str,
    *,
    region: str,
    credentials: ReadOnlyCredentials,
    url: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    time_limit: float = 10.0,
) -> EndpointReport:
    """Describe ``name``: its status and production variants (with instance types).

    Raises:
        ValidationError: The endpoint does not exist in ``region``.
        AccessDeniedError: The credentials are refused or not allowed to describe it.
        ConnectError: The control plane cannot be reached.
    """
    url = url or control_plane_url(region)
    # Checked first: botocore's signer and httpx fail on a URL without a host with an
    # AttributeError or a ValueError of their own, and a mistyped option would end in a traceback.
    parse_endpoint_url(url, name="control endpoint URL")
    verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
    async with httpx.AsyncClient(timeout=time_limit, verify=verify) as client:
        call = {"credentials": credentials, "region": region}
        try:
            endpoint = await _call(client, url, "DescribeEndpoint", {"EndpointName": name}, **call)
        except OperationError as exc:
            if exc.error_type == "ValidationException" and "not find" in exc.message.lower():
                raise ValidationError(
                    f"endpoint {name!r} not found in {region}: check --endpoint, and --region"
                    " (endpoints are regional; 'aws sagemaker list-endpoints' lists a region's)",
                    request_id=exc.request_id,
                ) from exc
            raise
        config_name = endpoint.get("EndpointConfigName")
        instance_types: dict[str, str] = {}
        if isinstance(config_name, str):
            try:
                config = await _call(
                    client,
                    url,
                    "DescribeEndpointConfig",
                    {"EndpointConfigName": config_name},
                    **call,
                )
            except FluxError:
                config = {}  # instance types are a nicety; DescribeEndpoint was enough
            for variant in config.get("ProductionVariants") or []:
                kind = variant.get("InstanceType") or (
                    "serverless" if variant.get("ServerlessConfig") else None
                )
                if kind:
                    instance_types[str(variant.get("VariantName"))] = str(kind)
    variants = []
    for variant in endpoint.get("ProductionVariants") or []:
        variant_name = str(variant.get("VariantName", "?"))
        count = variant.get("CurrentInstanceCount")
        kind = instance_types.get(variant_name, "instance type unknown")
        text = f"{variant_name}: {kind}" + (f" x {count}" if count is not None else "")
        statuses = [s.get("Status") for s in variant.get("VariantStatus") or [] if s.get("Status")]
        if statuses:
            text += f" ({', '.join(statuses)})"
        variants.append(text)
    return EndpointReport(
        name=str(endpoint.get("EndpointName", name)),
        status=str(endpoint.get("EndpointStatus", "unknown")),
        variants=tuple(variants),
        failure_reason=endpoint.get("FailureReason"),
        config_name=config_name if isinstance(config_name, str) else None,
    )


def require_in_service(report: EndpointReport) -> None:
    """Raise an actionable error unless the endpoint is ``InService``."""
    if report.status == "InService":
        return
    hint = {
        "Creating": "wait until it is InService (creation takes several minutes)",
        "Updating": "wait until the update finishes",
        "SystemUpdating": "wait until SageMaker's update finishes",
        "RollingBack": "wait for the rollback, then check the endpoint's events",
        "Failed": "see the failure reason, fix the model or configuration, and recreate it",
        "OutOfService": "it is out of service: update or recreate the endpoint",
    }.get(report.status, "it must be InService to stream")
    reason = f" ({report.failure_reason})" if report.failure_reason else ""
    raise UsageError(f"endpoint {report.name!r} is {report.status}{reason}: {hint}")


def explain_stream_error(error: FluxError, *, endpoint: str) -> str:
    """What a failed Flux stream means for someone running ``check``."""
    request = f" (request id {error.request_id})" if error.request_id else ""
    if isinstance(error, ModelError):
        original = f" (container: {error.original_message})" if error.original_message else ""
        logs = f"; logs: {error.log_stream_arn}" if error.log_stream_arn else ""
        return (
            f"the model container refused the Flux session (424){original}: it usually rejects a "
            "query parameter: check --model, and leave out --numerals/--profanity-filter on "
            f"bundles that refuse them{logs}{request}"
        )
    if isinstance(error, AccessDeniedError):
        return (
            f"access denied while opening the stream ({error.message}): grant "
            f"sagemaker:InvokeEndpointWithBidirectionalStream on endpoint {endpoint!r}{request}"
        )
    if isinstance(error, TimeoutError):
        return f"{error.message}: the endpoint did not open a Flux session in time{request}"
    return str(error)

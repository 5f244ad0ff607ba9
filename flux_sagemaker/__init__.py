"""Deepgram Flux streaming speech-to-text on Amazon SageMaker.

``FluxClient`` opens a Flux session on a SageMaker endpoint over HTTP/2 and yields typed turn
events; ``flux_sagemaker.testing`` has an in-process mock endpoint; ``flux_sagemaker.pipecat``
has a drop-in Pipecat service.
"""

from importlib.metadata import PackageNotFoundError, version

from .client import ClientStats, FluxClient, FluxEvent
from .core.events import (
    ConfigureFailure,
    ConfigureSuccess,
    Connected,
    EagerEndOfTurn,
    EndOfTurn,
    ServerError,
    ServerMessage,
    ServerWarning,
    StartOfTurn,
    Thresholds,
    Trigger,
    TurnEventType,
    TurnInfo,
    TurnResumed,
    Unknown,
    Update,
    Word,
)
from .core.lifecycle import ClientEvent, Reconnected, StreamRolledOver
from .core.recovery import RetryPolicy
from .core.settings import BundleCapabilities, Encoding, FluxSettings, Model, Redact
from .core.timers import KeepalivePolicy, RolloverPolicy
from .errors import (
    AccessDeniedError,
    CapabilityError,
    ConfigureRejected,
    ConnectError,
    ConnectionLost,
    ExpiredTokenError,
    FluxError,
    FluxServerError,
    FrameError,
    GoAway,
    InputValidationError,
    InternalServerError,
    InternalStreamFailure,
    LocalProtocolError,
    MessageParseError,
    ModelError,
    ModelStreamError,
    OperationError,
    ProtocolError,
    RemoteProtocolError,
    ServiceUnavailableError,
    StreamError,
    StreamReset,
    StreamStalled,
    ThrottlingError,
    TimeoutError,
    TransportError,
    UsageError,
    ValidationError,
)
from .pool import ConnectionPool, PoolStats
from .transport import Timeouts

try:
    __version__ = version("flux-sagemaker")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AccessDeniedError",
    "BundleCapabilities",
    "CapabilityError",
    "ClientEvent",
    "ClientStats",
    "ConfigureFailure",
    "ConfigureRejected",
    "ConfigureSuccess",
    "ConnectError",
    "Connected",
    "ConnectionLost",
    "ConnectionPool",
    "EagerEndOfTurn",
    "Encoding",
    "EndOfTurn",
    "ExpiredTokenError",
    "FluxClient",
    "FluxError",
    "FluxEvent",
    "FluxServerError",
    "FluxSettings",
    "FrameError",
    "GoAway",
    "InputValidationError",
    "InternalServerError",
    "InternalStreamFailure",
    "KeepalivePolicy",
    "LocalProtocolError",
    "MessageParseError",
    "Model",
    "ModelError",
    "ModelStreamError",
    "OperationError",
    "PoolStats",
    "ProtocolError",
    "Reconnected",
    "Redact",
    "RemoteProtocolError",
    "RetryPolicy",
    "RolloverPolicy",
    "ServerError",
    "ServerMessage",
    "ServerWarning",
    "ServiceUnavailableError",
    "StartOfTurn",
    "StreamError",
    "StreamReset",
    "StreamRolledOver",
    "StreamStalled",
    "Thresholds",
    "ThrottlingError",
    "TimeoutError",
    "Timeouts",
    "TransportError",
    "Trigger",
    "TurnEventType",
    "TurnInfo",
    "TurnResumed",
    "Unknown",
    "Update",
    "UsageError",
    "ValidationError",
    "Word",
    "__version__",
]

"""Pipecat adapter: ``DeepgramFluxSageMakerSTTService`` on :class:`~flux_sagemaker.FluxClient`.

A drop-in replacement for Pipecat 1.14's own service of the same name (the same keyword-only
constructor, nested ``Settings``, event handlers and frames) that runs on Python 3.11. The
protocol work (SigV4 and the botocore credential chain, 80 ms coalescing, keepalive silence,
recovery with replay, the final turn at close, Configure capabilities) is the client's:
:mod:`.turns` maps Flux events to Pipecat frames the way Pipecat's ``DeepgramFluxSTTBase`` does,
and :mod:`.service` runs the sessions and hands audio over while one connects.

Needs the ``pipecat`` extra: ``pip install 'flux-sagemaker[pipecat]'``.
"""

try:
    import pipecat  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"flux_sagemaker.pipecat needs Pipecat ({exc}): pip install 'flux-sagemaker[pipecat]'"
    ) from exc

from .service import DeepgramFluxSageMakerSTTService, DeepgramFluxSageMakerSTTSettings

__all__ = ["DeepgramFluxSageMakerSTTService", "DeepgramFluxSageMakerSTTSettings"]

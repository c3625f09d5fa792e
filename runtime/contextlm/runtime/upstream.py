"""The services the gateway calls: the retriever (HTTP JSON) and the generator (KServe v2 /
Triton protocol through `tritonclient`, the same client for `contextlm generator` and for
Triton with TensorRT-LLM).

Errors come out as `UpstreamError` carrying the HTTP status the gateway should answer
with: 503 when the service cannot be reached (retry later), 502 when it answered wrongly,
400 when it rejected the request (a bad filter, say).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .prompting import ContextChunk

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("contextlm.gateway.upstream")


class UpstreamError(RuntimeError):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error


@dataclass(frozen=True)
class Retrieved:
    index_version: str
    chunks: list[ContextChunk]
    timings: dict[str, float] = field(default_factory=dict)  # seconds by stage, if reported


def host_port(url: str) -> str:
    """tritonclient takes host:port without a scheme."""
    for scheme in ("http://", "https://", "grpc://"):
        url = url.removeprefix(scheme)
    return url.rstrip("/")


class RetrieverClient:
    def __init__(self, base_url: str, *, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def retrieve(self, query: str, *, top_k: int | None, filter: dict[str, str]) -> Retrieved:
        import aiohttp

        body: dict[str, Any] = {"query": query, "filter": filter}
        if top_k is not None:
            body["topK"] = top_k
        try:
            async with self.session().post(f"{self.base_url}/v1/retrieve", json=body) as response:
                payload = await response.json(content_type=None)
                status = response.status
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise UpstreamError(
                503, "RetrieverUnavailable", f"{type(exc).__name__}: {exc}"
            ) from exc
        if status == 400:
            raise UpstreamError(400, "BadRequest", f"retriever: {payload.get('reason', payload)}")
        if status != 200:
            code = 503 if status == 503 else 502
            raise UpstreamError(code, "RetrieverError", f"retriever answered {status}: {payload}")
        timings = payload.get("timings")
        return Retrieved(
            index_version=str(payload.get("indexVersion", "")),
            chunks=[ContextChunk.from_retriever(r) for r in payload.get("results", [])],
            timings=timings if isinstance(timings, dict) else {},
        )

    async def ready(self) -> str | None:
        """None when ready, else why not."""
        import aiohttp

        try:
            async with self.session().get(
                f"{self.base_url}/readyz", timeout=aiohttp.ClientTimeout(total=2)
            ) as response:
                if response.status == 200:
                    return None
                return f"retriever /readyz answered {response.status}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            return f"retriever unreachable: {type(exc).__name__}: {exc}"


@dataclass
class _ModelInputs:
    """The inputs the served model declares, and their shapes (batch dims set to 1)."""

    shapes: dict[str, list[int]]
    decoupled: bool


class GeneratorClient:
    """Non-streaming inference over HTTP, streaming over gRPC's ModelStreamInfer.

    The model's metadata is read once: optional inputs (`max_tokens`, `temperature`,
    `stream`) are sent only when the model declares them, and tensor shapes follow its
    declared rank, so the same code drives the CPU generator and TensorRT-LLM's ensemble.
    A decoupled model (TensorRT-LLM with streaming on) cannot answer HTTP infer at all, so
    non-streaming requests go over the gRPC stream too when one is configured."""

    def __init__(self, http_url: str, grpc_url: str | None, *, model: str, timeout: float) -> None:
        self.http_url = host_port(http_url)
        self.grpc_url = host_port(grpc_url) if grpc_url else None
        self.model = model
        self.timeout = timeout
        self._http: Any = None
        self._grpc: Any = None
        self._inputs: _ModelInputs | None = None

    def http(self) -> Any:
        if self._http is None:
            import tritonclient.http.aio as triton_http  # type: ignore[import-untyped]

            self._http = triton_http.InferenceServerClient(
                self.http_url, conn_limit=256, conn_timeout=self.timeout
            )
        return self._http

    def grpc(self) -> Any:
        if self._grpc is None:
            import tritonclient.grpc.aio as triton_grpc  # type: ignore[import-untyped]

            self._grpc = triton_grpc.InferenceServerClient(self.grpc_url)
        return self._grpc

    async def close(self) -> None:
        for client in (self._http, self._grpc):
            if client is not None:
                await client.close()

    async def inputs(self) -> _ModelInputs:
        if self._inputs is None:
            metadata = await self._call(self.http().get_model_metadata(self.model))
            shapes = {
                i["name"]: [1 if d < 0 else d for d in i["shape"]] or [1]
                for i in metadata["inputs"]
            }
            decoupled = False
            try:
                config = await self.http().get_model_config(self.model)
                decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled"))
            except Exception as exc:  # noqa: BLE001 - config is optional in the protocol
                log.debug("no model config from the generator (%s): assuming not decoupled", exc)
            if "text_input" not in shapes:
                raise UpstreamError(502, "GeneratorError", f"{self.model} has no text_input")
            self._inputs = _ModelInputs(shapes, decoupled)
        return self._inputs

    async def _call(self, awaitable: Any) -> Any:
        from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

        try:
            return await asyncio.wait_for(awaitable, self.timeout)
        except InferenceServerException as exc:
            raise _triton_error(exc) from exc
        except (TimeoutError, OSError) as exc:
            raise UpstreamError(
                503, "GeneratorUnavailable", f"{type(exc).__name__}: {exc}"
            ) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("aiohttp"):
                raise UpstreamError(503, "GeneratorUnavailable", str(exc)) from exc
            raise

    def _tensors(self, module: Any, spec: _ModelInputs, values: dict[str, Any]) -> list[Any]:
        import numpy as np

        dtypes = {
            "text_input": ("BYTES", np.object_),
            "max_tokens": ("INT32", np.int32),
            "temperature": ("FP32", np.float32),
            "stream": ("BOOL", np.bool_),
        }
        tensors = []
        for name, value in values.items():
            if name not in spec.shapes:
                continue
            triton_type, numpy_type = dtypes[name]
            shape = spec.shapes[name]
            array: Any = np.full(shape, value, dtype=numpy_type)
            tensor = module.InferInput(name, shape, triton_type)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return tensors

    async def generate(self, prompt: str, *, max_tokens: int, temperature: float) -> str:
        spec = await self.inputs()
        if spec.decoupled:
            if self.grpc_url is None:
                raise UpstreamError(
                    502, "GeneratorError", "the model is decoupled: configure generator_grpc"
                )
            parts = [
                p
                async for p in self.stream(
                    prompt, max_tokens=max_tokens, temperature=temperature, stream=False
                )
            ]
            return "".join(parts)
        import tritonclient.http.aio as triton_http

        values = {
            "text_input": prompt.encode(),
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        result = await self._call(
            self.http().infer(
                self.model,
                self._tensors(triton_http, spec, values),
                outputs=[triton_http.InferRequestedOutput("text_output", binary_data=True)],
            )
        )
        return _text(result)

    async def stream(
        self, prompt: str, *, max_tokens: int, temperature: float, stream: bool = True
    ) -> AsyncGenerator[str, None]:
        """Text pieces as the model produces them (one piece without a gRPC endpoint)."""
        if self.grpc_url is None:
            yield await self.generate(prompt, max_tokens=max_tokens, temperature=temperature)
            return
        import tritonclient.grpc.aio as triton_grpc

        spec = await self.inputs()
        values = {
            "text_input": prompt.encode(),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": stream,
        }
        request = {
            "model_name": self.model,
            "inputs": self._tensors(triton_grpc, spec, values),
            "outputs": [triton_grpc.InferRequestedOutput("text_output")],
        }

        async def requests() -> AsyncIterator[dict[str, Any]]:
            # One request, then the client half-closes: the server ends the call once it
            # has sent that request's last response.
            yield request

        responses = self.grpc().stream_infer(requests(), stream_timeout=self.timeout)
        try:
            async for result, error in _guard(responses, self._stream_error):
                if error is not None:
                    raise _triton_error(error)
                piece = _text(result)
                if piece:
                    yield piece
        finally:
            responses.cancel()

    def _stream_error(self, exc: Exception) -> UpstreamError:
        return UpstreamError(503, "GeneratorUnavailable", f"{type(exc).__name__}: {exc}")

    async def ready(self) -> str | None:
        try:
            live = await asyncio.wait_for(self.http().is_model_ready(self.model), 2)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return f"generator unreachable: {type(exc).__name__}: {exc}"
        return None if live else f"generator model {self.model} is not ready"


async def _guard(iterator: Any, wrap: Callable[[Exception], UpstreamError]) -> AsyncIterator[Any]:
    """Iterate a gRPC response stream, turning transport failures into UpstreamError."""
    import grpc  # type: ignore[import-untyped,unused-ignore]

    while True:
        try:
            item = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except (TimeoutError, grpc.RpcError, OSError) as exc:
            raise wrap(exc) from exc
        yield item


def _text(result: Any) -> str:
    array = result.as_numpy("text_output")
    if array is None or array.size == 0:
        return ""
    value = array.reshape(-1)[0]
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _triton_error(exc: Any) -> UpstreamError:
    status = str(exc.status() or "") if hasattr(exc, "status") else ""
    message = exc.message() if hasattr(exc, "message") else str(exc)
    if "UNAVAILABLE" in status or "unavailable" in message.lower():
        return UpstreamError(503, "GeneratorUnavailable", message)
    return UpstreamError(502, "GeneratorError", message)

"""KServe v2 over HTTP for `contextlm generator` (aiohttp).

Besides JSON tensors it speaks the binary tensor extension that `tritonclient.http`
uses by default: the body is a JSON header of `Inference-Header-Content-Length` bytes
followed by each binary tensor in order (`parameters.binary_data_size` long), and
outputs come back the same way when the request asks for binary data. Triton's
generate extension (`/generate`, `/generate_stream` as server-sent events) takes plain
JSON fields named after the inputs.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from .generator_engine import Completion
from .generator_protocol import (
    DECOUPLED_HTTP,
    MODEL_VERSION,
    InferError,
    check_input,
    check_outputs,
    from_list,
    from_raw,
    generate_tensors,
    model_config_json,
    model_metadata,
    server_metadata,
    to_raw,
    to_request,
)

if TYPE_CHECKING:
    from aiohttp import web

    from .generator import Generator

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_BODY = 64 << 20  # a 4096-token prompt is tens of kilobytes; a batch of them fits


def build_app(generator: Generator) -> web.Application:
    from aiohttp import web

    routes = Routes(generator)
    app = web.Application(client_max_size=MAX_BODY)
    add = app.router.add_route
    add("GET", "/v2", routes.server_metadata)
    add("GET", "/v2/health/live", routes.live)
    add("GET", "/v2/health/ready", routes.ready)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        add("GET", base, routes.model_metadata)
        add("GET", f"{base}/ready", routes.model_ready)
        add("GET", f"{base}/config", routes.model_config)
        add("POST", f"{base}/infer", routes.infer)
        add("POST", f"{base}/generate", routes.generate)
        add("POST", f"{base}/generate_stream", routes.generate_stream)
    add("POST", "/v2/repository/index", routes.repository_index)
    add("GET", "/metrics", routes.metrics)
    add("*", "/{tail:.*}", routes.not_found)  # a JSON error, which tritonclient can read
    return app


def error(status: int, message: str) -> web.Response:
    from aiohttp import web

    return web.json_response({"error": message}, status=status)


class Routes:
    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.config = generator.config

    def _model(self, request: web.Request) -> None:
        model, version = request.match_info["model"], request.match_info.get("version")
        if model != self.config.model_name:
            raise InferError(404, f"Request for unknown model: '{model}' is not found")
        if version not in (None, "", MODEL_VERSION):
            raise InferError(
                404, f"Request for unknown model: '{model}' version {version} is not found"
            )

    # Health and metadata ---------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        from aiohttp import web

        if self.generator.ready:
            return web.Response(status=200)
        return error(503, self.generator.reason)

    async def server_metadata(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.json_response(server_metadata(__version__))

    async def model_metadata(self, request: web.Request) -> web.Response:
        from aiohttp import web

        try:
            self._model(request)
        except InferError as exc:
            return error(exc.status, exc.message)
        return web.json_response(model_metadata(self.config))

    async def model_ready(self, request: web.Request) -> web.Response:
        from aiohttp import web

        try:
            self._model(request)
        except InferError as exc:
            return error(exc.status, exc.message)
        if self.generator.ready:
            return web.Response(status=200)
        return error(503, self.generator.reason)

    async def model_config(self, request: web.Request) -> web.Response:
        from aiohttp import web

        try:
            self._model(request)
        except InferError as exc:
            return error(exc.status, exc.message)
        return web.json_response(model_config_json(self.config))

    async def repository_index(self, request: web.Request) -> web.Response:
        from aiohttp import web

        state = "READY" if self.generator.ready else "LOADING"
        model = {"name": self.config.model_name, "version": MODEL_VERSION, "state": state}
        return web.json_response([model])

    async def not_found(self, request: web.Request) -> web.Response:
        return error(404, f"no such endpoint: {request.method} {request.path}")

    async def metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(
            body=generate_latest(self.generator.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    # Inference -------------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.StreamResponse:
        try:
            with self.generator.track("http", "infer"):
                return await self._infer(request)
        except InferError as exc:
            return error(exc.status, exc.message)
        except Exception as exc:  # noqa: BLE001 - answered as Triton does, in JSON
            return error(500, f"{type(exc).__name__}: {exc}")

    async def _infer(self, request: web.Request) -> web.Response:
        from aiohttp import web

        self._model(request)
        if self.config.decoupled:
            raise InferError(400, DECOUPLED_HTTP)
        body, binary = _split(await request.read(), request.headers.get(HEADER_LENGTH))
        tensors = _inputs(body, binary, self.config.model_name)
        wanted, binary_out = _outputs(body, self.config.model_name)
        ask = to_request(tensors, self.config)
        if ask.stream:
            raise InferError(400, "stream needs the gRPC stream or generate_stream")
        texts = await self.generator.complete_all(ask.prompts, ask.sampling)
        shape = [len(texts), 1] if ask.batched_output else [len(texts)]
        answer: dict[str, Any] = {"model_name": self.config.model_name}
        answer["model_version"] = MODEL_VERSION
        if "id" in body:
            answer["id"] = body["id"]
        output: dict[str, Any] = {"name": "text_output", "datatype": "BYTES", "shape": shape}
        answer["outputs"] = [output] if "text_output" in wanted else []
        if not binary_out:
            output["data"] = texts
            return web.json_response(answer)
        raw = to_raw(texts)
        output["parameters"] = {"binary_data_size": len(raw)}
        header = json.dumps(answer).encode()
        return web.Response(
            body=header + raw,
            headers={HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"},
        )

    async def generate(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        try:
            with self.generator.track("http", "generate"):
                self._model(request)
                body = _json(await request.read())
                ask = to_request(generate_tensors(body, self.config.model_name), self.config)
                completion = await self.generator.complete(ask.prompts[0], ask.sampling[0])
        except InferError as exc:
            return error(exc.status, exc.message)
        except Exception as exc:  # noqa: BLE001 - answered as Triton does, in JSON
            return error(500, f"{type(exc).__name__}: {exc}")
        return web.json_response(self._generated(body, completion.text))

    def _generated(self, body: Any, text: str) -> dict[str, Any]:
        answer = {"model_name": self.config.model_name, "model_version": MODEL_VERSION}
        if isinstance(body, dict) and "id" in body:
            answer["id"] = body["id"]
        return {**answer, "text_output": text}

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        try:
            with self.generator.track("http", "stream"):
                self._model(request)
                body = _json(await request.read())
                tensors = generate_tensors(body, self.config.model_name)
                streaming = "stream" not in tensors or bool(tensors["stream"].all())
                ask = to_request(tensors, self.config)
                admitted = self.generator.admit(ask.prompts[0])
                response = web.StreamResponse(
                    headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
                )
                await response.prepare(request)
                await self._events(response, body, admitted, ask.sampling[0], streaming)
                return response
        except InferError as exc:
            return error(exc.status, exc.message)

    async def _events(
        self, response: web.StreamResponse, body: Any, admitted: Any, sampling: Any, stream: bool
    ) -> None:
        async def event(payload: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps(payload)}\n\n".encode())

        sent = False
        try:
            run = self.generator.run(admitted, sampling, stream=stream)
            async with contextlib.aclosing(run) as items:
                async for item in items:
                    if isinstance(item, Completion):
                        if not sent or not stream:
                            await event(self._generated(body, "" if stream else item.text))
                        break
                    sent = True
                    await event(self._generated(body, item))
        except (ConnectionError, OSError):
            return  # the client left: leaving the loop stopped the generation
        except Exception as exc:  # noqa: BLE001 - the stream has begun: report it in band
            await event({"error": f"{type(exc).__name__}: {exc}"})
        await response.write_eof()


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InferError(400, f"the request body is not JSON: {exc}") from exc


def _split(raw: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary tensors after it."""
    if header_length is None:
        head, binary = raw, b""
    else:
        try:
            size = int(header_length)
        except ValueError as exc:
            raise InferError(400, f"bad {HEADER_LENGTH}: {header_length!r}") from exc
        if not 0 <= size <= len(raw):
            raise InferError(400, f"{HEADER_LENGTH} {size} exceeds the body ({len(raw)} bytes)")
        head, binary = raw[:size], raw[size:]
    body = _json(head)
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InferError(400, "the request must be a JSON object with a list of inputs")
    return body, binary


def _inputs(body: dict[str, Any], binary: bytes, model: str) -> dict[str, np.ndarray[Any, Any]]:
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for item in body["inputs"]:
        if not isinstance(item, dict):
            raise InferError(400, "each input must be a JSON object")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InferError(400, "each input needs a name and a datatype")
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise InferError(400, f"input '{name}' needs a shape: a list of integers")
        check_input(name, datatype, model)
        parameters = item.get("parameters") or {}
        if "shared_memory_region" in parameters:
            raise InferError(400, "shared memory inputs are not supported by this server")
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or offset + size > len(binary):
                raise InferError(400, f"input '{name}' binary_data_size exceeds the binary data")
            tensors[name] = from_raw(datatype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in item:
            tensors[name] = from_list(datatype, shape, item["data"])
        else:
            raise InferError(400, f"input '{name}' has neither data nor binary_data_size")
    if offset != len(binary):
        raise InferError(400, "the binary data is longer than the inputs declare")
    return tensors


def _outputs(body: dict[str, Any], model: str) -> tuple[set[str], bool]:
    """Which outputs to send and whether as binary data (Triton answers JSON unless the
    request asks for binary)."""
    parameters = body.get("parameters") or {}
    binary = bool(parameters.get("binary_data_output", False))
    requested = body.get("outputs")
    if not requested:
        return {"text_output"}, binary
    names = [o.get("name") for o in requested if isinstance(o, dict)]
    check_outputs([str(n) for n in names], model)
    for output in requested:
        if (output.get("parameters") or {}).get("binary_data"):
            binary = True
    return {str(n) for n in names}, binary

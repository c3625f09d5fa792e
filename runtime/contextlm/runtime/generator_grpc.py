"""Triton's GRPCInferenceService for `contextlm generator` (grpc.aio).

The servicer is the one generated from Triton's `grpc_service.proto` that
`tritonclient[grpc]` ships, so the wire format is Triton's own. ModelStreamInfer works
as Triton does for a decoupled model: each request on the stream is answered by one
response per generated text chunk, the last one carrying the parameter
`triton_final_response` = true (or, when the request sets
`triton_enable_empty_final_response`, followed by an empty final response). Requests on
one stream run concurrently and their responses interleave, told apart by `id`; an
error answers only its own request, in band, and the stream stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]  # typed by types-grpcio
import numpy as np
import tritonclient.grpc as triton_grpc  # type: ignore[import-untyped]

from .. import __version__
from .generator import Generator
from .generator_engine import Completion
from .generator_protocol import (
    DECOUPLED_GRPC,
    EXTENSIONS,
    INPUTS,
    MODEL_VERSION,
    OUTPUTS,
    SERVER_NAME,
    GenerateRequest,
    InferError,
    check_input,
    check_outputs,
    from_list,
    from_raw,
    model_config,
    to_raw,
    to_request,
)

pb = triton_grpc.service_pb2
MAX_MESSAGE = 64 << 20
FINAL = "triton_final_response"
EMPTY_FINAL = "triton_enable_empty_final_response"
CONTENTS = {  # datatype -> the InferTensorContents field that carries it
    "BYTES": "bytes_contents",
    "BOOL": "bool_contents",
    "INT32": "int_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
}
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    503: grpc.StatusCode.UNAVAILABLE,
}

Emit = Callable[[Any], Awaitable[None]]


async def start_grpc(generator: Generator, address: str) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
    )
    triton_grpc.service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        Servicer(generator), server
    )
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    await server.start()
    return server


class Servicer(triton_grpc.service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.config = generator.config

    def _model(self, name: str, version: str) -> None:
        if name != self.config.model_name:
            raise InferError(404, f"Request for unknown model: '{name}' is not found")
        if version not in ("", MODEL_VERSION):
            raise InferError(
                404, f"Request for unknown model: '{name}' version {version} is not found"
            )

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], exc: InferError) -> None:
        await context.abort(STATUS.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)

    # Health and metadata ---------------------------------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.generator.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            self._model(request.name, request.version)
        except InferError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.generator.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS)
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            self._model(request.name, request.version)
        except InferError as exc:
            await self._abort(context, exc)

        def tensors(specs: Any) -> list[Any]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=s.name, datatype=s.datatype, shape=[-1, *s.dims]
                )
                for s in specs
            ]

        return pb.ModelMetadataResponse(
            name=self.config.model_name,
            versions=[MODEL_VERSION],
            platform="transformers",
            inputs=tensors(INPUTS),
            outputs=tensors(OUTPUTS),
        )

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        try:
            self._model(request.name, request.version)
        except InferError as exc:
            await self._abort(context, exc)
        return pb.ModelConfigResponse(config=model_config(self.config))

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        state = "READY" if self.generator.ready else "LOADING"
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=self.config.model_name, version=MODEL_VERSION, state=state
                )
            ]
        )

    async def _unsupported(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not supported by contextlm generator")

    # Statistics, model control, shared memory, tracing and logging settings.
    ModelStatistics = RepositoryModelLoad = RepositoryModelUnload = _unsupported
    SystemSharedMemoryStatus = SystemSharedMemoryRegister = _unsupported
    SystemSharedMemoryUnregister = CudaSharedMemoryStatus = _unsupported
    CudaSharedMemoryRegister = CudaSharedMemoryUnregister = _unsupported
    TraceSetting = LogSettings = _unsupported

    # Inference -------------------------------------------------------------------------

    def _decode(self, request: Any) -> tuple[GenerateRequest, bool]:
        """The request as prompts, and whether it asks for an empty final response."""
        self._model(request.model_name, request.model_version)
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise InferError(400, "raw_input_contents must hold one entry per input")
        tensors: dict[str, np.ndarray[Any, Any]] = {}
        for index, tensor in enumerate(request.inputs):
            check_input(tensor.name, tensor.datatype, self.config.model_name)
            shape = [int(d) for d in tensor.shape]
            if raw:
                tensors[tensor.name] = from_raw(tensor.datatype, shape, raw[index])
            else:
                values = list(getattr(tensor.contents, CONTENTS[tensor.datatype]))
                tensors[tensor.name] = from_list(tensor.datatype, shape, values)
        check_outputs([o.name for o in request.outputs], self.config.model_name)
        empty_final = EMPTY_FINAL in request.parameters and bool(
            request.parameters[EMPTY_FINAL].bool_param
        )
        return to_request(tensors, self.config), empty_final

    def _response(
        self, request: Any, texts: list[str] | None, *, batched: bool, final: bool | None
    ) -> Any:
        response = pb.ModelInferResponse(
            model_name=self.config.model_name, model_version=MODEL_VERSION, id=request.id
        )
        if texts is not None:
            shape = [len(texts), 1] if batched else [len(texts)]
            response.outputs.add(name="text_output", datatype="BYTES", shape=shape)
            response.raw_output_contents.append(to_raw(texts))
        if final is not None:
            response.parameters[FINAL].bool_param = final
        return response

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        try:
            with self.generator.track("grpc", "infer"):
                if self.config.decoupled:
                    raise InferError(400, DECOUPLED_GRPC)
                ask, _ = self._decode(request)
                if ask.stream:
                    raise InferError(400, "stream needs ModelStreamInfer")
                texts = await self.generator.complete_all(ask.prompts, ask.sampling)
        except InferError as exc:
            await self._abort(context, exc)
        except Exception as exc:  # noqa: BLE001 - the client gets the reason, not UNKNOWN
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        return self._response(request, texts, batched=ask.batched_output, final=None)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        responses: asyncio.Queue[Any] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(self._answer(request, responses.put))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.wait(set(tasks))
            finally:
                await responses.put(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await responses.get()) is not None:
                yield response
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _answer(self, request: Any, emit: Emit) -> None:
        """Answer one request of a stream; errors go back in band."""

        async def send(texts: list[str] | None, *, batched: bool, final: bool) -> None:
            response = self._response(request, texts, batched=batched, final=final)
            await emit(pb.ModelStreamInferResponse(infer_response=response))

        try:
            with self.generator.track("grpc", "stream"):
                ask, empty_final = self._decode(request)
                chunks = self._chunks(ask) if ask.stream else self._whole(ask)
                last: list[str] | None = None
                async with contextlib.aclosing(chunks):
                    async for texts in chunks:
                        if last is not None:
                            await send(last, batched=ask.batched_output, final=False)
                        last = texts
                if empty_final:
                    if last is not None:
                        await send(last, batched=ask.batched_output, final=False)
                    await send(None, batched=ask.batched_output, final=True)
                else:
                    final = last if last is not None else [""] * len(ask.prompts)
                    await send(final, batched=ask.batched_output, final=True)
        except InferError as exc:
            await emit(pb.ModelStreamInferResponse(error_message=exc.message))
        except Exception as exc:  # noqa: BLE001 - one request failed, the stream goes on
            await emit(pb.ModelStreamInferResponse(error_message=f"{type(exc).__name__}: {exc}"))

    async def _whole(self, ask: GenerateRequest) -> AsyncGenerator[list[str], None]:
        yield await self.generator.complete_all(ask.prompts, ask.sampling)

    async def _chunks(self, ask: GenerateRequest) -> AsyncGenerator[list[str], None]:
        """Text deltas of a batch of one. The last one is held back by the caller so that
        it can carry the final flag, as TensorRT-LLM's last response does."""
        admitted = self.generator.admit(ask.prompts[0])
        run = self.generator.run(admitted, ask.sampling[0], stream=True)
        async with contextlib.aclosing(run) as items:
            async for item in items:
                if isinstance(item, Completion):
                    return
                yield [item]

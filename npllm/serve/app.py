"""The ASGI app of `npllm serve` (Starlette): OpenAI's endpoints over one `Engine`.

    GET  /health                 {"status": "ok", "running": n, "waiting": m}
    GET  /v1/models              the one model served, as OpenAI lists models
    GET  /v1/models/{id}
    POST /v1/completions         prompt: a string, a list of strings, or token ids
    POST /v1/chat/completions    messages through the model's chat template (ChatML)
    /                            the web page in npllm/serve/static/, when it is there

Requests are checked by `npllm.serve.protocol` (400 naming the parameter), then each
choice becomes an engine `Sequence`; the handler awaits the events the engine thread
hands over to the event loop (`npllm.serve.handoff`) and answers (the bodies and
chunks built by `npllm.serve.answer`) with one JSON body or, with `"stream": true`, with
server-sent events: `data: {chunk}\\n\\n` per token, or per group of tokens when the
event loop fell behind the engine (the first chunk of a chat choice carries the role, the
last its finish_reason), the usage chunk when
`stream_options.include_usage` asks, then `data: [DONE]`. A client that goes away cancels
its sequences: streaming through Starlette cancelling the response, a plain request by
polling for the disconnect while it waits.

Errors all have OpenAI's shape: 400 for a bad parameter or a prompt too long for the
context window (saying by how much), 401 without the right API key (`--api-key`, sent as
`Authorization: Bearer KEY`), 404 for an unknown model or path, 413 for a body over
`max_body_bytes`, 500 only when the server itself fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import mimetypes
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from npllm.chat import IM_START, encode_chat
from npllm.constrain import compile_grammar
from npllm.constrain.index import end_ids
from npllm.errors import NpllmError
from npllm.serve.answer import Answer, sse
from npllm.serve.engine import Engine
from npllm.serve.handoff import Inbox, deliver
from npllm.serve.protocol import APIError, bad, parse_chat, parse_completion, parse_json
from npllm.serve.sequence import Event, Sequence

STATIC = Path(__file__).parent / "static"
# The page's scripts are ES modules, which browsers run only when served with a JavaScript
# type; some systems' tables (the Windows registry) map .js to text/plain.
mimetypes.add_type("text/javascript", ".js")
MAX_BODY_BYTES = 1 << 20
DISCONNECT_POLL = 0.25  # seconds between checks that a plain request's client is still there
GRAMMAR_CACHE = 32  # compiled response_format grammars kept (compiling costs 0.05-0.2 s)
# Streams' tokens are handed to the event loop at most this often (seconds), a choice's
# first token and its end at once. Each hand-over wakes the loop, whose work (a chunk and
# a socket write for each stream) comes out of a decode step that runs on every core, and
# the step's other thread then spins waiting: 16 streams 3,000-3,100 tok/s at 5 ms,
# 3,450-3,950 at 20 ms; one stream ~900 -> ~945 (Intel Xeon; README, "Serving").
STREAM_INTERVAL = 0.02


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


class Server:
    """The endpoints' state: the engine, the tokenizer, the served name, the key."""

    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        model_name: str,
        api_key: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        stream_interval: float | None = None,
    ) -> None:
        self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
        self.stream_interval = STREAM_INTERVAL if stream_interval is None else stream_interval
        self.api_key, self.max_body_bytes = api_key, max_body_bytes
        self.config = engine.dec.config
        self.created = int(time.time())
        specials = getattr(tokenizer, "specials", {})
        self.chat = "<|im_start|>" in specials and "<|im_end|>" in specials
        # a reply ends at <|im_end|>, <|endoftext|>, or the start of another message
        self.end_ids = frozenset(end_ids(tokenizer))
        self.chat_stop_ids = self.end_ids | ({specials[IM_START]} if self.chat else set())
        self.grammars: OrderedDict[str, Any] = OrderedDict()
        self.outbox: list[tuple[asyncio.AbstractEventLoop, Inbox, Event]] = []
        self.urgent = False  # the outbox holds a first token or a last event
        self.handed = 0.0  # time.monotonic() of the last hand-over
        engine.flush = self.flush

    def flush(self) -> None:
        """On the engine's thread, once a step: hand the events emitted since the last
        hand-over to their event loops, one wake-up each, if `stream_interval` has passed
        since then or one of them is a choice's first token or its end."""
        if not self.outbox:
            return
        now = time.monotonic()
        if not self.urgent and now - self.handed < self.stream_interval:
            return
        self.urgent, self.handed = False, now
        events, self.outbox = self.outbox, []
        loops: dict[asyncio.AbstractEventLoop, list] = {}
        for loop, inbox, event in events:
            loops.setdefault(loop, []).append((inbox, event))
        for loop, batch in loops.items():
            loop.call_soon_threadsafe(deliver, batch)

    # ---- plumbing --------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise APIError(
                401,
                "you didn't provide an API key; send it as 'Authorization: Bearer KEY'",
                code="missing_api_key",
            )
        if not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")

    async def read_body(self, request: Request) -> dict:
        limit = self.max_body_bytes
        too_big = APIError(
            413,
            f"the request body is larger than the server's limit of {limit} bytes",
            code="request_too_large",
        )
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return parse_json(b"".join(chunks))

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(
                404,
                f"the model '{model}' does not exist; this server serves '{self.model_name}'",
                param="model",
                code="model_not_found",
            )

    def model_card(self) -> dict:
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "npllm",
            # extensions the web page reads
            "context_window": self.config.block_size,
            "chat": self.chat,
        }

    # ---- endpoints --------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        running, waiting = self.engine.load
        return JSONResponse({"status": "ok", "running": running, "waiting": waiting})

    async def models(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def model(self, request: Request) -> Response:
        self.authorize(request)
        self.check_model(request.path_params["model"])
        return JSONResponse(self.model_card())

    async def chat_completions(self, request: Request) -> Response:
        self.authorize(request)
        body = await self.read_body(request)
        req, messages = parse_chat(body, self.config.vocab_size)
        self.check_model(req.model)
        if not self.chat:
            raise bad(
                "messages",
                f"the model '{self.model_name}' is a text model without a chat template (its "
                "tokenizer has no <|im_start|>/<|im_end|> tokens); use /v1/completions, or "
                "train a chat model (`npllm prepare --chat`)",
                "no_chat_template",
            )
        ids, _ = encode_chat(self.tokenizer, messages, add_generation_prompt=True)
        return await self.generate(request, req, [ids], "messages", self.chat_stop_ids)

    async def completions(self, request: Request) -> Response:
        self.authorize(request)
        body = await self.read_body(request)
        req, prompts = parse_completion(body, self.config.vocab_size)
        self.check_model(req.model)
        ids = [p if isinstance(p, list) else self.tokenizer.encode(p) for p in prompts]
        if any(not p for p in ids):
            raise bad("prompt", "the prompt is empty; send some text")
        req.prompt_texts = [p if isinstance(p, str) else self.tokenizer.decode(p) for p in prompts]
        return await self.generate(request, req, ids, "prompt", self.end_ids)

    # ---- generation ------------------------------------------------------------------------
    def grammar(self, fmt: dict) -> Any:
        key = json.dumps(fmt, sort_keys=True)
        if key in self.grammars:
            self.grammars.move_to_end(key)
            return self.grammars[key]
        kw = {"grammar": "json_object"} if fmt["type"] == "json_object" else {}
        if fmt["type"] == "json_schema":
            kw = {"json_schema": fmt["schema"]}
        try:
            g = compile_grammar(**kw, tokenizer=self.tokenizer, vocab_size=self.config.vocab_size)
        except NpllmError as e:
            raise bad("response_format", f"'response_format' cannot be used: {e}") from None
        self.grammars[key] = g
        if len(self.grammars) > GRAMMAR_CACHE:
            self.grammars.popitem(last=False)
        return g

    async def generate(
        self, request: Request, req: Any, prompts: list[list[int]], param: str, stop_ids
    ) -> Response:
        bs = self.config.block_size
        for ids in prompts:
            if len(ids) >= bs:
                raise APIError(
                    400,
                    f"this model's maximum context length is {bs} tokens, which must hold the "
                    f"prompt and at least one generated token; the prompt is {len(ids)} "
                    f"tokens: shorten it by {len(ids) - bs + 1} tokens",
                    param=param,
                    code="context_length_exceeded",
                )
        grammar = None
        if req.response_format is not None:
            grammar = await asyncio.to_thread(self.grammar, req.response_format)
        loop = asyncio.get_running_loop()
        inbox = Inbox()
        started: set[int] = set()  # the choices whose first token was emitted

        def emit(event: Event) -> None:  # on the engine's thread, until its next flush
            self.outbox.append((loop, inbox, event))
            if event.finish_reason is not None or event.index not in started:
                started.add(event.index)
                self.urgent = True

        groups, seed = [], req.params.seed
        for i, ids in enumerate(prompts):
            limit = bs - len(ids)
            params = dataclasses.replace(
                req.params,
                max_tokens=min(req.max_tokens or limit, limit),
                grammar=grammar,
            )
            group = []
            for j in range(req.n):
                index = i * req.n + j
                rng_seed = None if seed is None else [seed % 2**64, index]
                try:
                    group.append(Sequence(index, ids, params, emit, stop_ids, rng_seed))
                except NpllmError as e:  # the grammar needs more tokens than allowed
                    raise bad("max_tokens", str(e)) from None
            groups.append(group)
        seqs = [s for g in groups for s in g]
        for g in groups:
            self.engine.submit(g)
        answer = Answer(self, req, prompts, seqs)
        if req.stream:
            return StreamingResponse(
                self.events(answer, inbox),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            checked = time.monotonic()
            while not answer.finished:
                try:
                    answer.add(await asyncio.wait_for(inbox.take(), DISCONNECT_POLL), render=False)
                except asyncio.TimeoutError:
                    pass
                if time.monotonic() - checked >= DISCONNECT_POLL:
                    if await request.is_disconnected():
                        break
                    checked = time.monotonic()
        finally:
            if not answer.finished:
                self.engine.cancel(seqs)
        if answer.error:
            raise APIError(500, f"the server failed: {answer.error}", type="server_error")
        return JSONResponse(answer.body())

    async def events(self, answer: Answer, inbox: Inbox) -> AsyncIterator[str]:
        """The stream's server-sent events: one piece of text a wake-up, which holds the
        chunks of every event that came meanwhile (the end, usage and [DONE] included)."""
        try:
            first = "".join(sse(chunk) for chunk in answer.first_chunks())
            if first:
                yield first
            while True:
                out = answer.add(await inbox.take())
                if answer.finished:
                    if answer.error:
                        out += sse(APIError(500, answer.error, type="server_error").body())
                    elif answer.req.include_usage:
                        out += sse(answer.usage_chunk())
                    yield out + "data: [DONE]\n\n"
                    return
                if out:
                    yield out
        finally:
            if not answer.finished:  # the client went away: free its rows now
                self.engine.cancel(answer.seqs)


def build_app(
    model: Any,
    tokenizer: Any,
    *,
    model_name: str = "npllm",
    api_key: str | None = None,
    max_batch: int = 64,
    max_body_bytes: int = MAX_BODY_BYTES,
    stream_interval: float | None = None,
    static_dir: str | Path | None = STATIC,
) -> Starlette:
    """The app over `model` (a GPT or a `Decoder`) and its tokenizer. Its engine thread
    starts and stops with the app (ASGI lifespan); `app.state.server` is the `Server`.
    `stream_interval` in seconds, None for `STREAM_INTERVAL`."""
    from contextlib import asynccontextmanager

    from npllm.decoder import as_decoder

    engine = Engine(as_decoder(model), tokenizer, max_batch=max_batch)
    server = Server(engine, tokenizer, model_name, api_key, max_body_bytes, stream_interval)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    async def api_error(request: Request, exc: Exception) -> Response:
        return error_response(exc)  # type: ignore[arg-type]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(APIError(exc.status_code, msg, type=kind, code=kind))

    async def not_found(request: Request) -> Response:
        known = {r.path for r in routes[:5]}
        if request.url.path in known:  # a real endpoint, asked with the wrong method
            raise HTTPException(405, "Method Not Allowed")
        raise HTTPException(404, "Not Found")

    async def disconnect(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)

    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response(APIError(500, f"the server failed: {exc!r}", type="server_error"))

    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/models/{model:path}", server.model, methods=["GET"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        # any other /v1 path is an API path that does not exist, not a file of the page
        Route("/v1/{rest:path}", not_found, methods=["GET", "HEAD", "POST", "PUT", "DELETE"]),
    ]
    if static_dir is not None and Path(static_dir).is_dir():
        routes.append(Mount("/", StaticFiles(directory=static_dir, html=True), name="static"))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            APIError: api_error,
            HTTPException: http_error,
            ClientDisconnect: disconnect,
            Exception: server_error,
        },
    )
    app.state.server = server
    return app

"""`npllm serve`: an OpenAI-compatible HTTP server (the `serve` extra: Starlette, uvicorn).

- `protocol`: request checking and OpenAI's error shape;
- `engine`: the continuous-batching decode loop (one thread, every request's rows);
- `app`: the Starlette app, its endpoints, streaming (server-sent events);
- `static/`: the web page, served at `/` when present.

`build_app(model, tokenizer, ...)` gives the ASGI app; `npllm serve --run RUN` runs it
under uvicorn.
"""

from __future__ import annotations

from npllm.serve.app import build_app

__all__ = ["build_app"]

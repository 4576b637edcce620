"""`npllm serve`: an OpenAI-compatible HTTP server (the `serve` extra: Starlette, uvicorn).

- `protocol`: request checking and OpenAI's error shape;
- `sequence`: one choice being generated: its sampling parameters, events, text and
  stop strings;
- `engine`: the continuous-batching decode loop (one thread, every request's rows);
- `handoff`: the engine's events handed to the event loop (one wake-up a step);
- `answer`: one request's events as OpenAI's JSON body or server-sent-event chunks;
- `app`: the Starlette app, its endpoints, streaming, errors;
- `static/`: the web page, served at `/` when present.

`build_app(model, tokenizer, ...)` gives the ASGI app; `npllm serve --run RUN` runs it
under uvicorn.
"""

from __future__ import annotations

from npllm.serve.app import build_app

__all__ = ["build_app"]

"""`npllm serve --run RUN`: serve a run's model over OpenAI's HTTP API (`npllm.serve`).

Binds to 127.0.0.1:8000 by default (loopback: only this machine can reach it; pass
`--host 0.0.0.0` to open it to the network, ideally with `--api-key`). The model is named
after the run folder unless `--model-name` says otherwise; clients must send that name,
or none. `--quantized` serves the int8 checkpoint of `npllm quantize`. Needs the `serve`
extra: `pip install -e ".[serve]"`.
"""

from __future__ import annotations

import argparse

from npllm.commands.sample import add_run_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free one)")
    p.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' (default: the NPLLM_API_KEY variable, "
        "else no key)",
    )
    p.add_argument(
        "--model-name", default=None, metavar="NAME", help="the model's name (default: the run's)"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=64,
        metavar="N",
        help="sequences decoded together at most; more wait their turn (default 64)",
    )
    p.add_argument(
        "--stream-interval",
        type=float,
        default=None,
        metavar="MS",
        help="a stream's tokens go out at most every MS milliseconds, as one chunk (its first "
        "token and its end at once); 0: each decode step's tokens as they come (default: 20, "
        "npllm.serve.app.STREAM_INTERVAL)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=1 << 20,
        metavar="N",
        help="largest request body accepted, in bytes (default 1 MiB)",
    )


def run(args: argparse.Namespace) -> int:
    import os
    import sys
    from pathlib import Path

    from npllm.errors import ConfigError

    try:
        import uvicorn

        from npllm.serve import build_app
    except ImportError as e:
        raise ConfigError(
            f'npllm serve needs the serve extra ({e.name} is missing): pip install -e ".[serve]"'
        ) from None
    from npllm.runs import load_run

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in [0, 65535], got {args.port}")
    if args.max_batch < 1:
        raise ConfigError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.stream_interval is not None and not 0 <= args.stream_interval <= 1000:
        raise ConfigError(f"--stream-interval must be in [0, 1000] ms, got {args.stream_interval}")
    if args.max_body_bytes < 1024:
        raise ConfigError(f"--max-body-bytes must be >= 1024, got {args.max_body_bytes}")
    loaded = load_run(args.run, args.checkpoint, quantized=args.quantized)
    name = args.model_name or Path(args.run).resolve().name
    api_key = args.api_key if args.api_key is not None else os.environ.get("NPLLM_API_KEY")
    app = build_app(
        loaded.model,
        loaded.tokenizer,
        model_name=name,
        api_key=api_key or None,
        max_batch=args.max_batch,
        max_body_bytes=args.max_body_bytes,
        stream_interval=None if args.stream_interval is None else args.stream_interval / 1e3,
    )
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info")
    server = uvicorn.Server(config)
    print(
        f"npllm serve: model '{name}' (context {loaded.config.block_size} tokens) at "
        f"http://{args.host}:{args.port}/v1{'' if api_key else ' (no API key)'}",
        file=sys.stderr,
    )
    server.run()
    return 0

"""Load benchmark of `npllm serve`: N concurrent streaming clients (1, 4, 16, 64) against
one server at `guppy` shape (6 layers, width 384, ReLU MLP 768, context 128) with a
byte-level BPE of 4,096 tokens trained on tinyshakespeare, random weights.

Each client streams one /v1/completions request (a 16-token prompt, `max_tokens` new
tokens, temperature 1, its own seed) and records when each chunk arrives. Tokens are
counted from the usage chunk, not from chunks: the server sends the tokens a stream piled
up while its event loop was busy as one chunk. Per level, in `--rounds` rounds: aggregate
tokens/s (every stream's tokens over the wall time from the first request to the last
[DONE]), per-stream tokens/s (its tokens after the first over its first to last chunk),
time to first token p50/p99, inter-token latency p50/p99 (the gaps between a stream's
chunks, with the mean tokens a chunk beside them), errors (HTTP errors or error events:
must be 0) and requests lost (no finish_reason or no [DONE]: must be 0). A random model
never ends a text early, so every request yields exactly `max_tokens` tokens, which is
checked too.

The baseline is `npllm sample --stream`'s loop: `npllm.generate.stream` on the same model
in a process of its own (batch 1, the same sampling), each token's text decoded as the
command does, timed from its first token to its last, as the single-stream server figure
is; it runs in every round, before the server's levels (the server idle meanwhile), so
that the machine's changing mood hits both. The server runs with its default stream
interval (`--stream-interval MS` sets another; 0 sends each step's tokens at once).

Targets (issue 13): 16 streams >= 4x one stream's aggregate tokens/s; one stream within
15% of `npllm sample`; at 64 streams nothing fails or is lost.

Processes: the server runs in its own process (uvicorn on 127.0.0.1, a free port), the
baseline in another, and the clients in this one (no npllm import). The clients share the
machine's two cores with the server, so, like wrk or k6, they are a lean load generator
that takes as little CPU as it can: by default an HTTP/1.1 client on an asyncio Protocol
(one keep-alive connection a stream, the chunked transfer coding and the server-sent
events parsed by hand as the bytes arrive, one json.loads an event; ~25 us of CPU a token
at 16 streams, everything included); `--client httpx` runs the same streams through
httpx, which costs about 0.2 ms more a chunk, for comparison with earlier figures.

    python benchmarks/serve.py                         # 3 rounds of 1, 4, 16, 64 streams
    python benchmarks/serve.py --rounds 5 --write      # update benchmarks/RESULTS.md
    python benchmarks/serve.py --clients 1 4 --tokens 20 --rounds 1   # a quick check
    python benchmarks/serve.py --client httpx          # the streams through httpx
Run it only under the shared lock: flock /tmp/npllm-cpu.lock python benchmarks/serve.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    MARK,
    command_line,
    cpu_isa,
    cpu_model,
    load_average,
    log,
    worker_info,
    write_section,
)

CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
VOCAB = 4096
PROMPT = "ROMEO: But soft, what light through yonder window breaks? It is"
GUPPY = dict(
    vocab_size=VOCAB,
    block_size=128,
    n_layer=6,
    n_head=6,
    n_embd=384,
    mlp_hidden=768,
    activation="relu",
)


# ---- the model's processes -----------------------------------------------------------------
def load(spec: dict):
    """(GPT with random weights at guppy shape, the BPE tokenizer) of the spec."""
    from npllm.gpt import GPT, GPTConfig
    from npllm.tokenizers import load_tokenizer

    return GPT(GPTConfig(**GUPPY), seed=0).eval(), load_tokenizer(spec["tokenizer"])


def tokenizer_worker(spec: dict) -> None:
    from npllm.tokenizers import BPETokenizer

    t0 = time.perf_counter()
    tok = BPETokenizer.train(Path(spec["corpus"]).read_text(encoding="utf-8"), VOCAB)
    tok.save(spec["tokenizer"])
    log(f"  BPE {VOCAB} trained in {time.perf_counter() - t0:.1f} s")


def sample_worker(spec: dict) -> dict:
    """`npllm sample`'s loop (generate.stream, batch 1) on the benchmark's model."""
    from npllm.decoder import Decoder
    from npllm.generate import stream

    model, tok = load(spec)
    dec = Decoder.from_model(model)
    prompt = tok.encode(PROMPT)
    rates = []
    for k in range(spec["generations"] + 2):  # two warm-ups: compilation, threading choice
        times, ids, shown = [], [], 0
        for token in stream(dec, prompt, spec["tokens"], temperature=1.0, seed=k):
            # what `npllm sample --stream` does with each token (the server does the same):
            # the text so far decoded whole (a token may end inside a character), its
            # complete part shown
            ids.append(token)
            text = tok.decode(ids)
            shown = max(shown, len(text.rstrip("\ufffd")))
            times.append(time.perf_counter())
        if k >= 2:
            rates.append((len(times) - 1) / (times[-1] - times[0]))
    return {"tokens_per_s": rates, "prompt_tokens": len(prompt), "info": worker_info("npllm")}


def server_worker(spec: dict) -> None:
    """Serve the benchmark's model until killed; prints the port when ready."""
    import uvicorn

    from npllm.serve import build_app

    model, tok = load(spec)
    app = build_app(
        model,
        tok,
        model_name="guppy",
        max_batch=spec["max_batch"],
        stream_interval=spec["stream_interval"],  # None: the server's default
    )
    config = uvicorn.Config(app, host="127.0.0.1", port=spec["port"], log_level="warning")
    server = uvicorn.Server(config)
    print(f"{MARK}{json.dumps({'info': worker_info('npllm')})}", flush=True)
    server.run()


# ---- the clients -----------------------------------------------------------------------------
# The lean client (the default): a load generator should take as little of the server's
# CPU as it can, as wrk and k6 do. Each stream is one HTTP/1.1 connection of its own
# (keep-alive, kept in a pool for reuse) read by an asyncio Protocol: the request is
# written in one piece, and the response is taken apart in `data_received` as it comes
# (status line and headers, the chunked transfer coding, the server-sent events), one
# json.loads an event, with no coroutine switch per chunk. httpx (`--client httpx`) costs
# about 0.2 ms of CPU a chunk more, on the same two cores as the server.
class HTTPError(Exception):
    """A status other than 200, or a response the lean client cannot read."""


class StreamProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: a POST out, its response read as it comes,
    the data of each server-sent event passed to `on_data`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future | None = None
        self.reusable = True

    def connection_made(self, transport) -> None:
        self.transport = transport

    def request(self, host: str, path: str, body: bytes, on_data) -> asyncio.Future:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.on_data, self.buf, self.events, self.state = on_data, b"", b"", "head"
        self.status, self.body, self.left, self.chunked = 0, b"", 0, False
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(head.encode() + body)
        return self.done

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            while self.done is not None and not self.done.done() and self._step():
                pass
        except Exception as e:  # a response this client cannot read
            self.reusable = False
            self.done.set_exception(HTTPError(f"unreadable response: {e!r}"))

    def _step(self) -> bool:
        """Take one piece of the response from the buffer; False when it needs more."""
        buf = self.buf
        if self.state == "head":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            lines = buf[:end].decode("latin-1").split("\r\n")
            self.buf = buf[end + 4 :]
            self.status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip().lower()
            self.reusable = headers.get("connection") != "close"
            self.chunked = "chunked" in headers.get("transfer-encoding", "")
            self.left = int(headers.get("content-length", 0))
            self.state = "size" if self.chunked else "length"
            return True
        if self.state == "length":  # a body of Content-Length bytes (an error answer)
            if len(buf) < self.left:
                return False
            self._piece(buf[: self.left])
            self.buf = buf[self.left :]
            self._finish()
            return False
        if self.state == "size":
            end = buf.find(b"\r\n")
            if end < 0:
                return False
            self.left = int(buf[:end].split(b";")[0], 16)
            self.buf = buf[end + 2 :]
            self.state = "data" if self.left else "trailer"
            return True
        if self.state == "data":
            if len(buf) < self.left + 2:
                return False
            self._piece(buf[: self.left])
            self.buf = buf[self.left + 2 :]
            self.state = "size"
            return True
        end = buf.find(b"\r\n")  # trailer: lines up to an empty one
        if end < 0:
            return False
        self.buf = buf[end + 2 :]
        if end == 0:
            self._finish()
        return True

    def _piece(self, data: bytes) -> None:
        if self.status != 200:
            self.body += data
            return
        self.events += data
        *events, self.events = self.events.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    self.on_data(line[6:].decode())

    def _finish(self) -> None:
        if self.status != 200:
            self.done.set_exception(HTTPError(f"HTTP {self.status}: {self.body[:200]!r}"))
        else:
            self.done.set_result(None)

    def connection_lost(self, exc) -> None:
        self.reusable = False
        if self.done is not None and not self.done.done():
            self.done.set_exception(HTTPError(f"connection lost: {exc!r}"))


class LeanClient:
    """Connections to one server, reused between requests (keep-alive)."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port, self.free = host, int(port), []

    async def stream(self, path: str, body: dict, on_data) -> None:
        """POST `body`; `on_data(text)` with the data of each server-sent event of the
        answer as it comes (a status other than 200 raises HTTPError)."""
        if self.free:
            conn = self.free.pop()
        else:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(StreamProtocol, self.host, self.port)
        ok = False
        try:
            await conn.request(self.host, path, json.dumps(body).encode(), on_data)
            ok = True
        finally:
            if ok and conn.reusable:
                self.free.append(conn)
            else:
                conn.transport.close()

    async def aclose(self) -> None:
        for conn in self.free:
            conn.transport.close()
        self.free = []


class HttpxClient:
    """The same through httpx (`--client httpx`): what a typical Python client costs."""

    def __init__(self, url: str, n: int) -> None:
        import httpx

        limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
        self.url, self.client = url, httpx.AsyncClient(timeout=600, limits=limits)

    async def stream(self, path: str, body: dict, on_data) -> None:
        async with self.client.stream("POST", self.url + path, json=body) as r:
            if r.status_code != 200:
                raise HTTPError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    on_data(line[len("data: ") :])

    async def aclose(self) -> None:
        await self.client.aclose()


async def one_stream(
    client, tokens: int, seed: int, model: str = "guppy", prompt: str = PROMPT
) -> dict:
    """One streamed request: when each text chunk arrived, its text, the finish reason,
    the usage's completion_tokens (a chunk may hold several tokens: the server sends a
    stream's tokens together when they pile up), and whether [DONE] came."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 1.0,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    out = {"start": time.perf_counter(), "chunks": [], "texts": [], "error": None}
    out.update(done=False, finish=None, tokens=0)

    def record(data: str) -> None:
        if data == "[DONE]":
            out["done"] = True
            return
        chunk = json.loads(data)
        if "error" in chunk:
            out["error"] = chunk["error"]["message"]
        elif chunk["choices"]:
            choice = chunk["choices"][0]
            if choice["text"]:
                out["chunks"].append(time.perf_counter())
                out["texts"].append(choice["text"])
            out["finish"] = choice["finish_reason"] or out["finish"]
        elif chunk.get("usage"):
            out["tokens"] = chunk["usage"]["completion_tokens"]

    try:
        await client.stream("/v1/completions", body, record)
    except Exception as e:  # an HTTP error or a dropped connection counts as an error
        out["error"] = repr(e)
    out["end"] = time.perf_counter()
    return out


async def level(url: str, n: int, tokens: int, seed0: int, kind: str = "lean") -> list[dict]:
    client = LeanClient(url) if kind == "lean" else HttpxClient(url, n)
    try:
        return await asyncio.gather(*(one_stream(client, tokens, seed0 + i) for i in range(n)))
    finally:
        await client.aclose()


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarise(streams: list[dict], tokens: int) -> dict:
    ok = [s for s in streams if s["error"] is None]
    lost = [s for s in ok if not s["done"] or s["finish"] is None]
    wall = max(s["end"] for s in streams) - min(s["start"] for s in streams)
    ttft = [s["chunks"][0] - s["start"] for s in ok if s["chunks"]]
    itl = [b - a for s in ok for a, b in zip(s["chunks"], s["chunks"][1:])]
    # a stream's own rate: its tokens after the first chunk's one, over first to last chunk
    spans = [(s["tokens"] - 1, s["chunks"][-1] - s["chunks"][0]) for s in ok if s["chunks"]]
    single = [n / t for n, t in spans if t > 0]  # streams of one chunk have no rate
    return {
        "aggregate": sum(s["tokens"] for s in ok) / wall,
        "per_stream": statistics.median(single) if single else float("nan"),
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "itl_p50": percentile(itl, 50),
        "itl_p99": percentile(itl, 99),
        "errors": len(streams) - len(ok),
        "lost": len(lost),
        "short": sum(s["tokens"] != tokens for s in ok),
        "per_chunk": sum(s["tokens"] for s in ok) / max(1, sum(len(s["chunks"]) for s in ok)),
        "wall": wall,
    }


# ---- the parent ------------------------------------------------------------------------------
def spawn_result(kind: str, spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--spec", json.dumps(spec)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"the {kind} worker failed:\n{p.stderr[-2000:]}")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(MARK)]
    return json.loads(lines[-1][len(MARK) :]) if lines else {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(spec: dict) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, __file__, "--worker", "server", "--spec", json.dumps(spec)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = p.stdout.readline()
    if not line.startswith(MARK):
        p.kill()
        raise SystemExit("the server did not start")
    import httpx

    url = f"http://127.0.0.1:{spec['port']}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return p, json.loads(line[len(MARK) :])["info"]
        except httpx.HTTPError:
            time.sleep(0.1)
    p.kill()
    raise SystemExit("the server did not answer /health")


NOTE = """How to read it: "aggregate" is every stream's tokens over the level's wall time;
"per stream" a stream's own tokens/s from its first chunk to its last (median over the
streams); time to first token (TTFT) runs from sending the request to its first text
chunk, so at 64 streams it includes waiting for the other prompts' prefills; inter-token
latency (ITL) is the gap between a stream's chunks, and "tokens a chunk" how many tokens
they carried on average (the server hands a stream's tokens over at most every stream
interval, 20 ms by default, the first token alone at once, and sends what piled up as one
chunk; so an ITL near 20 ms is that interval, not a slow step). Continuous batching: the running
streams share each decode step (the weights are read once per step for all rows), so
aggregate tokens/s grows with the streams until the step's arithmetic, not the weights'
memory traffic, is the bound."""


def report(
    levels: dict, baseline: list[float], rounds: int, tokens: int, info: dict, client: str
) -> str:
    base = statistics.median(baseline)
    one = statistics.median(r["aggregate"] for r in levels.get(1, [])) if 1 in levels else None
    rows = [
        "| streams | aggregate tok/s | x one stream | per stream tok/s | TTFT p50 / p99 ms "
        "| ITL p50 / p99 ms | tokens a chunk | errors | lost | short |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, runs in levels.items():

        def med(key, runs=runs):
            return statistics.median(r[key] for r in runs)

        agg = [r["aggregate"] for r in runs]
        x = f"{med('aggregate') / one:.2f}" if one else "-"
        rows.append(
            f"| {n} | {med('aggregate'):,.0f} ({min(agg):,.0f}-{max(agg):,.0f}) | {x} "
            f"| {med('per_stream'):,.0f} "
            f"| {med('ttft_p50') * 1e3:.1f} / {med('ttft_p99') * 1e3:.1f} "
            f"| {med('itl_p50') * 1e3:.2f} / {med('itl_p99') * 1e3:.2f} "
            f"| {med('per_chunk'):.2f} "
            f"| {sum(r['errors'] for r in runs)} | {sum(r['lost'] for r in runs)} "
            f"| {sum(r['short'] for r in runs)} |"
        )
    lines = [
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, {cpu_isa()}. "
        f"Server: {info.get('python', '?')} / numpy {info.get('numpy', '?')} / numba "
        f"{info.get('numba', '?')}. {rounds} rounds per level, {tokens} tokens a request, "
        f"{client} clients.",
        "",
        *rows,
        "",
        f"`npllm sample --stream`'s loop (generate.stream, batch 1, own process, run in "
        f"each round before the server's levels): {base:,.0f} tok/s "
        f"(runs {min(baseline):,.0f}-{max(baseline):,.0f}).",
    ]
    if 1 in levels:
        single = statistics.median(r["per_stream"] for r in levels[1])
        lines.append(
            f"One stream through the server: {single:,.0f} tok/s = {single / base:.2f}x of it."
        )
    return "\n".join(lines + ["", NOTE]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--tokens", type=int, default=100, help="max_tokens of each request")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--generations", type=int, default=4, help="baseline generations in each round")
    ap.add_argument("--corpus", type=Path, default=CORPUS, help="text to train the BPE on")
    ap.add_argument(
        "--client",
        choices=["lean", "httpx"],
        default="lean",
        help="the streaming clients: lean asyncio HTTP/1.1 (default) or httpx",
    )
    ap.add_argument(
        "--stream-interval",
        type=float,
        default=None,
        metavar="MS",
        help="the server's stream interval in ms (default: the server's own; 0: every step)",
    )
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(args.spec)
        if args.worker == "server":
            server_worker(spec)
            return 0
        if args.worker == "tokenizer":
            tokenizer_worker(spec)
            return 0
        print(MARK + json.dumps(sample_worker(spec)), flush=True)
        return 0
    if not args.corpus.is_file():
        raise SystemExit(f"{args.corpus} is missing; pass --corpus FILE")
    load0 = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            "corpus": str(args.corpus),
            "tokenizer": str(Path(tmp) / "tokenizer.json"),
            "tokens": args.tokens,
            "generations": args.generations,
            "max_batch": max(64, max(args.clients)),
            "port": free_port(),
            "stream_interval": None if args.stream_interval is None else args.stream_interval / 1e3,
        }
        log("training the BPE tokenizer")
        spawn_result("tokenizer", spec)
        baseline: list[float] = []
        proc, info = start_server(spec)
        url = f"http://127.0.0.1:{spec['port']}"
        try:
            log("warm-up: compilation and the decoder's threading choice")
            for n in (1, 1, 4, 16):
                asyncio.run(level(url, n, args.tokens, 10_000, args.client))
            levels: dict[int, list[dict]] = {n: [] for n in args.clients}
            for r in range(args.rounds):
                # the baseline in each round, between the server's levels (the server idle)
                rates = spawn_result("sample", spec)["tokens_per_s"]
                baseline += rates
                log(f"  round {r + 1}, npllm sample's loop: {statistics.median(rates):,.0f} tok/s")
                for n in args.clients:
                    streams = asyncio.run(level(url, n, args.tokens, 1000 * r, args.client))
                    s = summarise(streams, args.tokens)
                    levels[n].append(s)
                    log(
                        f"  round {r + 1}, {n} streams: {s['aggregate']:,.0f} tok/s, TTFT p99 "
                        f"{s['ttft_p99'] * 1e3:.0f} ms, errors {s['errors']}, lost {s['lost']}"
                    )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    text = report(levels, baseline, args.rounds, args.tokens, info, args.client)
    text += f"\nCommand: `{command_line('serve.py', argv)}`; load average {load0:.2f} at start, "
    text += f"{load_average():.2f} at end.\n"
    print(text)
    if args.write:
        write_section("Serving (npllm serve, guppy shape)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

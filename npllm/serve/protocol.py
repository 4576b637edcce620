"""OpenAI's protocol: request bodies checked into a `Request`, errors in OpenAI's shape.

Every parameter is checked here, by hand, so that a bad one is answered with status 400
and a message naming it (`APIError.param`), as OpenAI's API does:
`{"error": {"message": ..., "type": "invalid_request_error", "param": ..., "code": ...}}`.
Parameters of OpenAI's API that npllm does not implement (tools, audio, ...) are refused
by name rather than silently ignored; `user`, `metadata`, `store` and a few other
bookkeeping fields are accepted and ignored. Extensions, as vLLM names them: `top_k`,
`repetition_penalty`.

Presence and frequency penalties follow OpenAI's formula over the tokens generated so far
(as vLLM applies them): logit -= presence * (count > 0) + frequency * count.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from npllm.serve.sequence import SamplingParams

# parameters accepted and ignored (bookkeeping that does not change the output)
IGNORED = {
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
    "prompt_cache_key",
    "safety_identifier",
}
COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "logprobs",
}
CHAT = COMMON | {"messages", "max_completion_tokens", "top_logprobs", "response_format"}
COMPLETION = COMMON | {"prompt", "echo", "best_of", "suffix"}
MAX_N = 16
MAX_TOP_LOGPROBS = 20


class APIError(Exception):
    """An error answered in OpenAI's shape with HTTP `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status,
            message,
            param,
            code,
            type,
        )

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class Request:
    """A checked request: `prompts` as token ids (one per prompt; chat has one),
    `n` choices each, the sampling parameters (max_tokens before clipping to the
    window), the grammar's description for `response_format`, and how to answer."""

    kind: str  # "chat" or "completion"
    model: str | None
    prompts: list[list[int]]
    n: int
    params: SamplingParams
    stream: bool
    include_usage: bool
    max_tokens: int | None  # None: up to the context window
    response_format: dict | None = None
    echo: bool = False
    prompt_texts: list[str] | None = None


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(
            400,
            f"the request body is not valid JSON ({e}); send a JSON object",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise APIError(
            400,
            f"the request body must be a JSON object, got {type(body).__name__}",
            code="invalid_json",
        )
    return body


def _number(body: dict, name: str, default: float | None, lo: float, hi: float) -> float | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(name, f"'{name}' must be a number, got {json.dumps(v)}", "invalid_type")
    if not lo <= v <= hi:
        raise bad(name, f"'{name}' must be between {lo:g} and {hi:g}, got {v:g}")
    return float(v)


def _integer(body: dict, name: str, default: int | None, lo: int, hi: int | None) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(name, f"'{name}' must be an integer, got {json.dumps(v)}", "invalid_type")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise bad(name, f"'{name}' must be {rng}, got {v}")
    return v


def _boolean(body: dict, name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad(name, f"'{name}' must be true or false, got {json.dumps(v)}", "invalid_type")
    return v


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if (
        not isinstance(stops, list)
        or not 1 <= len(stops) <= 4
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise bad("stop", "'stop' must be a non-empty string or a list of 1 to 4 of them")
    return stops


def _logit_bias(body: dict, vocab_size: int) -> dict[int, float]:
    v = body.get("logit_bias")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise bad("logit_bias", "'logit_bias' must be an object of token id -> bias")
    out = {}
    for k, b in v.items():
        try:
            t = int(k)
        except ValueError:
            t = -1
        if not 0 <= t < vocab_size:
            raise bad("logit_bias", f"'logit_bias' key {k!r} is no token id in [0, {vocab_size})")
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not -100 <= b <= 100:
            raise bad("logit_bias", f"'logit_bias' values must lie in [-100, 100], got {b!r}")
        out[t] = float(b)
    return out


def _check_keys(body: dict, known: set[str]) -> None:
    unknown = sorted(k for k in body if k not in known and k not in IGNORED)
    if unknown:
        raise bad(
            unknown[0],
            f"unrecognized request argument supplied: {unknown[0]} (npllm serve does not "
            "implement it)",
            "unsupported_parameter",
        )


def sampling(body: dict, vocab_size: int, max_tokens_names: tuple[str, ...]) -> SamplingParams:
    """The parameters every endpoint shares (max_tokens is filled in per prompt)."""
    max_tokens = None
    for name in max_tokens_names:
        v = _integer(body, name, None, 1, None)
        if v is not None:
            max_tokens = v
    params = SamplingParams(
        max_tokens=max_tokens or 0,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", None, 0.0, 1.0),
        top_k=_integer(body, "top_k", None, 0, None) or None,
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.01, 10.0),
        seed=_integer(body, "seed", None, -(2**63), 2**63 - 1),
        stop=_stop(body),
        logit_bias=_logit_bias(body, vocab_size),
    )
    if params.top_p == 0:
        raise bad("top_p", "'top_p' must be above 0 (1 keeps every token)")
    return params


def stream_options(body: dict) -> bool:
    """include_usage, from `stream_options` (only with `stream`)."""
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not body.get("stream"):
        raise bad("stream_options", "'stream_options' is only allowed when 'stream' is true")
    if not isinstance(opts, dict) or not set(opts) <= {"include_usage", "include_obfuscation"}:
        raise bad("stream_options", "'stream_options' must be like {\"include_usage\": true}")
    return _boolean(opts, "include_usage")


def parse_common(body: dict, kind: str, vocab_size: int) -> Request:
    names = ("max_tokens", "max_completion_tokens") if kind == "chat" else ("max_tokens",)
    params = sampling(body, vocab_size, names)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model", "'model' must be a string", "invalid_type")
    return Request(
        kind=kind,
        model=model,
        prompts=[],
        n=_integer(body, "n", 1, 1, MAX_N),
        params=params,
        stream=_boolean(body, "stream"),
        include_usage=stream_options(body),
        max_tokens=params.max_tokens or None,
    )


def message_text(content: Any, where: str) -> str:
    """A message's text: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad("messages", f"{where} has a {kind} content part; only text is supported")
            if not isinstance(part.get("text"), str):
                raise bad("messages", f"{where} has a text part without a 'text' string")
            parts.append(part["text"])
        return "".join(parts)
    raise bad("messages", f"{where} needs a 'content' string")


def chat_messages(body: dict) -> list[dict[str, str]]:
    """The messages as {"role", "content"} strings; "developer" is read as "system"."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("messages", "'messages' must be a non-empty list of {role, content} objects")
    out = []
    for k, m in enumerate(msgs):
        where = f"messages[{k}]"
        if not isinstance(m, dict):
            raise bad("messages", f"{where} must be an object with 'role' and 'content'")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise bad(
                "messages",
                f"{where} has role {json.dumps(role)}; use system, developer, user or assistant",
            )
        if role == "system" and k > 0:
            raise bad("messages", f"{where} is a system message; only the first may be one")
        out.append({"role": role, "content": message_text(m.get("content"), where)})
    return out


def response_format(body: dict) -> dict | None:
    """`response_format` as {"type": "json_object"} or {"type": "json_schema", "schema": ...}
    (None for plain text)."""
    rf = body.get("response_format")
    if rf is None:
        return None
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema", {}), (dict, bool)):
            raise bad(
                "response_format",
                "'response_format' of type json_schema needs 'json_schema': "
                '{"name": ..., "schema": {...}}',
            )
        return {"type": "json_schema", "schema": js.get("schema", {})}
    raise bad(
        "response_format",
        "'response_format' must have type text, json_object or json_schema, got "
        f"{json.dumps(kind)}",
    )


def parse_chat(body: dict, vocab_size: int) -> tuple[Request, list[dict[str, str]]]:
    _check_keys(body, CHAT)
    req = parse_common(body, "chat", vocab_size)
    logprobs = _boolean(body, "logprobs")
    top = _integer(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    if top and not logprobs:
        raise bad("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    req.params.logprobs, req.params.top_logprobs = logprobs, top
    req.response_format = response_format(body)
    return req, chat_messages(body)


def parse_completion(body: dict, vocab_size: int) -> tuple[Request, list[str | list[int]]]:
    _check_keys(body, COMPLETION)
    req = parse_common(body, "completion", vocab_size)
    if body.get("suffix") is not None:
        raise bad("suffix", "'suffix' is not supported by npllm serve", "unsupported_parameter")
    if _integer(body, "best_of", 1, 1, None) != 1:
        raise bad("best_of", "'best_of' other than 1 is not supported; use 'n'")
    top = _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    req.params.logprobs = top is not None
    req.params.top_logprobs = top or 0
    req.echo = _boolean(body, "echo")
    p = body.get("prompt")
    if isinstance(p, str) or (isinstance(p, list) and p and all(isinstance(t, int) for t in p)):
        prompts: list[Any] = [p]
    elif isinstance(p, list) and p and all(isinstance(x, (str, list)) for x in p):
        prompts = list(p)
    else:
        raise bad(
            "prompt",
            "'prompt' must be a string, a list of strings, or token ids (a list of integers "
            "or a list of such lists)",
        )
    for x in prompts:
        if isinstance(x, list) and not (
            x and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
        ):
            raise bad("prompt", "a token-id prompt must be a non-empty list of integers")
        if isinstance(x, list) and not all(0 <= t < vocab_size for t in x):
            raise bad("prompt", f"token ids in 'prompt' must lie in [0, {vocab_size})")
    return req, prompts

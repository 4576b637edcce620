// Talking to the server: the page's state, headers (the API key), OpenAI-shaped errors,
// server-sent events, and the streaming POST every request goes through.

export const $ = (id) => document.getElementById(id);

// Names of the context-window field in /v1/models or /health, npllm's first; the others
// are what vLLM and llama.cpp's servers call it, so the page reads those too.
const CONTEXT_FIELDS = ["context_window", "max_model_len", "context_length", "n_ctx"];
// Tokens a chat turn costs beyond its text (<|im_start|>role\n ... <|im_end|>\n).
export const TURN_OVERHEAD = 5;
export const COMPLETIONS_MAX_LOGPROBS = 5; // the legacy endpoint's limit

export const state = {
  mode: "chat",
  model: null, // id from /v1/models
  context: null, // the model's context window in tokens, when the server says it
  chatTemplate: null, // true/false when the server says, null when unknown
  messages: [], // chat history: {role, content, tokens, dropped, el}
  dropped: 0, // exchanges left out of the context so far
  tokensPerChar: 1, // learned from replies, to estimate a new message's size
  controller: null, // AbortController of the running request
  used: 0, // tokens the meter shows
  toldNoChat: false, // the switch to completion mode for a text model was said
};

// ---------------------------------------------------------------- server
export function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    let message = err.message;
    if (!message && body && body.detail) {
      message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
    super(message || (typeof body === "string" && body) || `HTTP ${status}`);
    this.status = status;
    this.type = err.type || null;
    this.param = err.param || null;
    this.code = err.code || null;
  }
}

export async function errorOf(res) {
  const text = await res.text();
  try {
    return new ApiError(res.status, JSON.parse(text));
  } catch {
    return new ApiError(res.status, text.trim() || res.statusText);
  }
}

// Server-sent events: yields the data of each event, the blocks separated by a blank line.
async function* events(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf = (buf + decoder.decode(value, { stream: true })).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) yield data;
    }
  }
}

// POST a streaming request; onChunk gets each parsed chunk. Resolves when the stream
// ends, rejects with ApiError (HTTP or in-stream error) or an AbortError when stopped.
export async function stream(path, body, onChunk) {
  showRequest(path, body);
  const controller = new AbortController();
  state.controller = controller;
  const res = await fetch(path, {
    method: "POST",
    headers: headers(),
    body: JSON.stringify(body),
    signal: controller.signal,
  });
  if (!res.ok) throw await errorOf(res);
  for await (const data of events(res)) {
    if (data === "[DONE]") return;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new ApiError(res.status, chunk);
    onChunk(chunk);
  }
}

function showRequest(path, body) {
  $("last-request").textContent = `POST ${path}\n${JSON.stringify(body, null, 2)}`;
}

export function contextOf(obj) {
  if (!obj || typeof obj !== "object") return null;
  for (const name of CONTEXT_FIELDS) {
    if (Number.isInteger(obj[name]) && obj[name] > 0) return obj[name];
  }
  if (obj.meta) return contextOf(obj.meta);
  return null;
}

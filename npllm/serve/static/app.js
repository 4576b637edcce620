// npllm's page: talks to `npllm serve` through the OpenAI-compatible endpoints it came
// from (/v1/models, /v1/chat/completions, /v1/completions), streams each reply, and shows
// every generated token as a chip coloured by its probability, whose alternatives
// (logprobs/top_logprobs) open on hover, tap or focus.
// The page's entry (index.html loads it as an ES module, which imports the rest): the
// connection to the server, the composer and the two modes.

import { $, contextOf, errorOf, headers, state } from "./server.js";
import { closePop } from "./popover.js";
import { logOf, note, showError, updateMeter } from "./log.js";
import { sendChat } from "./chat.js";
import { sendCompletion } from "./completion.js";

async function connect() {
  const status = $("status");
  try {
    const res = await fetch("/v1/models", { headers: headers() });
    if (!res.ok) throw await errorOf(res);
    const list = await res.json();
    const model = (list.data || [])[0];
    if (!model) throw new Error("the server lists no model");
    state.model = model.id;
    state.context = contextOf(model);
    if (typeof model.chat === "boolean") state.chatTemplate = model.chat; // npllm's extension
    if (state.context === null) {
      const health = await fetch("/health").then((r) => (r.ok ? r.json() : null)).catch(() => null);
      state.context = contextOf(health);
    }
    $("model-name").textContent = state.model;
    $("model-context").textContent = state.context ? `${state.context} tokens` : "not reported";
    status.dataset.state = "ok";
    status.textContent = state.model;
    if (state.chatTemplate === false && !state.toldNoChat) {
      state.toldNoChat = true;
      setMode("completion");
      note("completion", "This model has no chat template: it continues raw text (completion mode).");
    }
  } catch (e) {
    status.dataset.state = "down";
    status.textContent = e.status === 401 ? "API key needed" : "server unreachable";
    showError(state.mode, e);
  }
  updateMeter();
}
// ---------------------------------------------------------------- composer and modes
function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
  $("status").dataset.state = on ? "busy" : "ok";
}

async function send() {
  const input = $("input");
  const text = input.value;
  if (!text.trim() || state.controller) return;
  if (!state.model) await connect(); // the server was down, or wanted a key, at load
  input.value = "";
  busy(true);
  closePop();
  try {
    if (state.mode === "chat") await sendChat(text);
    else await sendCompletion(text);
  } finally {
    state.controller = null;
    busy(false);
    input.focus();
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

function setMode(mode) {
  state.mode = mode;
  $("chat-view").hidden = mode !== "chat";
  $("completion-view").hidden = mode !== "completion";
  $("mode-chat").setAttribute("aria-pressed", String(mode === "chat"));
  $("mode-completion").setAttribute("aria-pressed", String(mode === "completion"));
  $("send").textContent = mode === "chat" ? "Send" : "Generate";
  $("input").placeholder =
    mode === "chat"
      ? "Message (Enter sends, Shift+Enter for a new line, Esc stops)"
      : "Prompt to continue (Enter generates, Shift+Enter for a new line, Esc stops)";
  closePop();
  updateMeter(0);
}

function reset() {
  stop();
  if (state.mode === "chat") {
    state.messages = [];
    state.dropped = 0;
  }
  logOf(state.mode).replaceChildren();
  updateMeter(0);
  $("input").focus();
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && state.controller) stop();
});
$("stop").addEventListener("click", stop);
$("reset").addEventListener("click", reset);
$("mode-chat").addEventListener("click", () => setMode("chat"));
$("mode-completion").addEventListener("click", () => setMode("completion"));
$("api_key").addEventListener("change", connect);
$("server-form").addEventListener("submit", (e) => {
  e.preventDefault();
  connect();
});

// a narrow screen starts with the side panels closed, under the conversation
if (window.matchMedia("(max-width: 760px)").matches) $("sampling").open = false;
connect();

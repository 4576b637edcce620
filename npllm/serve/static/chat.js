// Chat mode: the conversation kept within the model's context window (the oldest
// exchanges dropped and marked), each turn streamed from /v1/chat/completions.

import { $, ApiError, state, stream, TURN_OVERHEAD } from "./server.js";
import { numberField, samplingParams } from "./sampling.js";
import { chatTokens, Output } from "./tokens.js";
import { addEntry, showError, showMeta, updateMeter } from "./log.js";

// ---------------------------------------------------------------- chat
const estimate = (text) => Math.ceil(text.length * state.tokensPerChar) + TURN_OVERHEAD;
const kept = () => state.messages.filter((m) => !m.dropped);
const cost = (m) => (m.tokens !== null ? m.tokens : estimate(m.content));

function systemMessage() {
  const text = $("system").value;
  return text.trim() ? { role: "system", content: text, tokens: null } : null;
}

// Leaves out the oldest exchange still sent (a user turn and the reply after it), and
// marks it; false when only the newest user turn is left.
function dropOldest() {
  const live = kept();
  if (live.length <= 1) return false;
  const first = live[0];
  const next = live[1];
  first.dropped = true;
  first.el.classList.add("dropped");
  if (next.role === "assistant" && next !== live[live.length - 1]) {
    next.dropped = true;
    next.el.classList.add("dropped");
  }
  state.dropped += 1;
  let mark = $("chat-log").querySelector(".dropped-mark");
  if (!mark) {
    mark = document.createElement("li");
    mark.className = "dropped-mark";
  }
  const firstKept = kept()[0];
  firstKept.el.before(mark);
  mark.textContent = `▲ ${state.dropped} older turn${state.dropped === 1 ? "" : "s"} dropped: the model's context holds ${state.context || "a limited number of"} tokens`;
  updateMeter();
  return true;
}

// Drops old turns until the estimated prompt leaves room for a reply: max_tokens, or a
// quarter of the context if that is less (as `npllm chat` does).
function fitContext() {
  if (!state.context) return;
  const reserve = Math.min(numberField("max_tokens") || 16, Math.floor(state.context / 4));
  const sys = systemMessage();
  for (;;) {
    const prompt = (sys ? cost(sys) : 0) + kept().reduce((s, m) => s + cost(m), 0) + 3;
    if (prompt + reserve <= state.context || !dropOldest()) return;
  }
}

const isContextError = (e) =>
  e instanceof ApiError &&
  e.status === 400 &&
  (e.code === "context_length_exceeded" || /context length|context window/i.test(e.message));

export async function sendChat(text) {
  const user = { role: "user", content: text, tokens: null, dropped: false };
  user.el = addEntry("chat", "user", text);
  state.messages.push(user);
  fitContext();
  for (;;) {
    const ok = await chatRequest(user);
    if (ok !== "retry") return;
  }
}

async function chatRequest(user) {
  const sys = systemMessage();
  const sent = (sys ? [sys] : []).concat(kept());
  const body = {
    model: state.model || "npllm",
    messages: sent.map((m) => ({ role: m.role, content: m.content })),
    stream: true,
    stream_options: { include_usage: true },
    ...samplingParams("chat"),
  };
  const li = addEntry("chat", "assistant", "");
  li.sampling = body;
  const out = new Output(li.querySelector(".body"));
  const started = performance.now();
  const before = sent.reduce((s, m) => s + cost(m), 0) + 3;
  let finish = null;
  let usage = null;
  try {
    await stream("/v1/chat/completions", body, (chunk) => {
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const delta = choice.delta || {};
        if (delta.content || choice.logprobs) out.add(delta.content || "", chatTokens(choice));
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      updateMeter(usage ? usage.total_tokens : before + out.count);
    });
  } catch (e) {
    out.done();
    if (e.name === "AbortError") {
      finish = "stopped";
    } else {
      li.remove();
      if (isContextError(e) && dropOldest()) return "retry";
      // the turn was not answered: it leaves the history, its text goes back to the box
      state.messages.splice(state.messages.indexOf(user), 1);
      user.el.classList.add("failed");
      if (!$("input").value) $("input").value = user.content;
      showError("chat", e);
      return "error";
    }
  }
  out.done();
  if (!state.messages.includes(user)) return "done"; // the conversation was reset meanwhile
  showMeta(li, finish, usage, started, out.count);
  const reply = { role: "assistant", content: out.text, tokens: null, dropped: false, el: li };
  state.messages.push(reply);
  if (usage) {
    // the reply's cost is exact; the new user turn takes what the prompt held beyond the rest
    reply.tokens = usage.completion_tokens + 2;
    if (out.text.length) state.tokensPerChar = Math.max(0.1, usage.completion_tokens / out.text.length);
    const others = sent.slice(0, -1).reduce((s, m) => s + cost(m), 0);
    user.tokens = Math.max(1, usage.prompt_tokens - others);
    updateMeter(usage.total_tokens);
  }
  return "done";
}

// The conversation log (entries, notes, errors, each reply's finish reason and usage)
// and the context meter.

import { $, ApiError, state } from "./server.js";

// ---------------------------------------------------------------- the log
export const logOf = (mode) => $(mode === "chat" ? "chat-log" : "completion-log");

export function scrollDown() {
  const section = $(state.mode === "chat" ? "chat-view" : "completion-view");
  section.scrollTop = section.scrollHeight;
}

export function addEntry(mode, role, text) {
  const li = document.createElement("li");
  li.className = `msg ${role}`;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = { user: "you", assistant: "model", prompt: "prompt", completion: "model" }[role] || role;
  const body = document.createElement("div");
  body.className = "body";
  if (text) body.textContent = text;
  li.append(label, body);
  logOf(mode).appendChild(li);
  scrollDown();
  return li;
}

export function note(mode, text) {
  const li = document.createElement("li");
  li.className = "msg note meta";
  li.textContent = text;
  logOf(mode).appendChild(li);
}

export function showError(mode, e) {
  const li = document.createElement("li");
  li.className = "msg error";
  li.setAttribute("role", "alert");
  const title = document.createElement("strong");
  if (e instanceof ApiError) {
    const bits = [e.type, e.param && `param ${e.param}`, e.code].filter(Boolean).join(", ");
    title.textContent = `Error ${e.status}${bits ? ` (${bits})` : ""}`;
  } else {
    title.textContent = "Error";
  }
  li.append(title, e.message || String(e));
  logOf(mode).appendChild(li);
  scrollDown();
}

export function showMeta(li, finish, usage, started, count) {
  const meta = document.createElement("div");
  meta.className = "meta";
  const f = document.createElement("span");
  f.className = "finish";
  f.dataset.reason = finish || "none";
  f.textContent =
    { stop: "finish: stop", length: "finish: length (token limit or context window)", stopped: "stopped by you" }[finish] ||
    `finish: ${finish || "none"}`;
  meta.appendChild(f);
  const parts = [];
  if (usage) {
    parts.push(
      `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion = ${usage.total_tokens} tokens`,
    );
  }
  const secs = (performance.now() - started) / 1000;
  const n = usage ? usage.completion_tokens : count;
  parts.push(`${secs.toFixed(2)} s`);
  if (n && secs > 0) parts.push(`${(n / secs).toFixed(0)} tokens/s`);
  const u = document.createElement("span");
  u.className = "usage";
  u.textContent = ` · ${parts.join(" · ")}`;
  meta.appendChild(u);
  li.appendChild(meta);
  li.dataset.finishReason = finish || "";
  scrollDown();
}

// ---------------------------------------------------------------- context meter
export function updateMeter(used) {
  if (used !== undefined) state.used = used;
  const ctx = state.context;
  const meter = $("meter");
  $("meter-text").textContent = `${state.used} / ${ctx || "?"} tokens`;
  const frac = ctx ? Math.min(1, state.used / ctx) : 0;
  $("meter-fill").style.width = `${(frac * 100).toFixed(1)}%`;
  meter.dataset.level = frac > 0.8 ? "high" : "low";
  meter.setAttribute("aria-valuemax", String(ctx || 0));
  meter.setAttribute("aria-valuenow", String(state.used));
  const dropped = $("meter-dropped");
  dropped.hidden = state.mode !== "chat" || state.dropped === 0;
  dropped.textContent = `${state.dropped} old turn${state.dropped === 1 ? "" : "s"} dropped`;
}

// npllm's page: talks to `npllm serve` through the OpenAI-compatible endpoints it came
// from (/v1/models, /v1/chat/completions, /v1/completions), streams each reply, and shows
// every generated token as a chip coloured by its probability, whose alternatives
// (logprobs/top_logprobs) open on hover, tap or focus.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  // Names of the context-window field in /v1/models or /health, npllm's first; the others
  // are what vLLM and llama.cpp's servers call it, so the page reads those too.
  const CONTEXT_FIELDS = ["context_window", "max_model_len", "context_length", "n_ctx"];
  // Tokens a chat turn costs beyond its text (<|im_start|>role\n ... <|im_end|>\n).
  const TURN_OVERHEAD = 5;
  const COMPLETIONS_MAX_LOGPROBS = 5; // the legacy endpoint's limit

  const state = {
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
  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = $("api_key").value.trim();
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  class ApiError extends Error {
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

  async function errorOf(res) {
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
  async function stream(path, body, onChunk) {
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

  function contextOf(obj) {
    if (!obj || typeof obj !== "object") return null;
    for (const name of CONTEXT_FIELDS) {
      if (Number.isInteger(obj[name]) && obj[name] > 0) return obj[name];
    }
    if (obj.meta) return contextOf(obj.meta);
    return null;
  }

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

  // ---------------------------------------------------------------- sampling controls
  function numberField(id) {
    const raw = $(id).value.trim();
    if (raw === "") return null;
    const v = Number(raw);
    return Number.isFinite(v) ? v : raw; // an unreadable value is sent as typed: the server names it
  }

  function samplingParams(endpoint) {
    const p = {
      temperature: numberField("temperature"),
      top_p: numberField("top_p"),
      presence_penalty: numberField("presence_penalty"),
      frequency_penalty: numberField("frequency_penalty"),
      max_tokens: numberField("max_tokens"),
    };
    const rep = numberField("repetition_penalty");
    if (rep !== null && rep !== 1) p.repetition_penalty = rep;
    const topK = numberField("top_k");
    if (topK !== null && topK !== 0) p.top_k = topK;
    const seed = numberField("seed");
    if (seed !== null) p.seed = seed;
    const k = numberField("top_logprobs") ?? 0;
    if (endpoint === "chat") {
      p.logprobs = true;
      if (k) p.top_logprobs = k;
    } else {
      p.logprobs = Number.isFinite(k) ? Math.min(Math.max(k, 0), COMPLETIONS_MAX_LOGPROBS) : k;
    }
    for (const key of Object.keys(p)) if (p[key] === null) delete p[key];
    return p;
  }

  // each slider and its number box show one value
  for (const range of document.querySelectorAll("input[type=range][data-for]")) {
    const box = $(range.dataset.for);
    range.addEventListener("input", () => (box.value = range.value));
    box.addEventListener("input", () => (range.value = box.value));
  }

  // ---------------------------------------------------------------- tokens
  const visible = (s) => s.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
  const pct = (p) => (p >= 0.9995 ? "100%" : p >= 0.0005 ? `${(p * 100).toFixed(1)}%` : p > 0 ? "<0.1%" : "0%");

  // probability -> hue: orange (unlikely) through green to blue (certain), a scale that
  // stays readable for red-green colour blindness at its ends
  const hue = (p) => Math.round(25 + 185 * Math.min(1, Math.max(0, p)));

  // One generated token: its text, log-probability, and the alternatives the server gave
  // ([{token, logprob}], best first after sorting).
  function tokenChip(text, logprob, top) {
    const chip = document.createElement("span");
    chip.className = "tok";
    chip.tabIndex = -1;
    chip.setAttribute("role", "button");
    chip.setAttribute("aria-haspopup", "dialog");
    chip.setAttribute("aria-expanded", "false");
    const p = Math.exp(logprob);
    const alts = (top || []).slice().sort((a, b) => b.logprob - a.logprob);
    const i = alts.findIndex((a) => a.token === text);
    chip.tokenInfo = { text, logprob, p, alts, rank: i >= 0 ? i + 1 : null };
    chip.dataset.p = p.toFixed(4);
    chip.dataset.rank = i >= 0 ? String(i + 1) : "";
    chip.style.setProperty("--h", String(hue(p)));
    if (text.includes("\n")) {
      chip.textContent = text.replace(/\n/g, "↵\n");
    } else {
      chip.textContent = text === "" ? "∅" : text;
    }
    chip.setAttribute("aria-label", `${visible(text)}, probability ${pct(p)}`);
    return chip;
  }

  // The text of a reply as it streams: chips when the chunk carries logprobs, plain text
  // otherwise.
  class Output {
    constructor(body) {
      this.body = body;
      this.text = "";
      this.count = 0;
      body.classList.add("cursor");
      body.setAttribute("aria-busy", "true"); // a screen reader reads the reply once, at its end
    }
    add(content, tokens) {
      if (tokens && tokens.length) {
        // chips show each token's own text; the reply's text (kept for the next turn) is
        // the content, which may differ: the server holds back a token that ends inside
        // a UTF-8 character, and drops stop strings
        tokens.forEach((t, n) => {
          const chip = tokenChip(t.token, t.logprob, t.top);
          if (this.count === 0 && n === 0) chip.tabIndex = 0;
          this.body.appendChild(chip);
          this.count += 1;
        });
      } else if (content) {
        const span = document.createElement("span");
        span.className = "plain";
        span.textContent = content;
        this.body.appendChild(span);
        this.count += 1;
      }
      this.text += content || "";
      scrollDown();
    }
    done() {
      this.body.classList.remove("cursor");
      this.body.removeAttribute("aria-busy");
    }
  }

  // A byte-level BPE token may hold part of a UTF-8 character; its text then has U+FFFD,
  // and the page shows its bytes instead: ‹e2 80›.
  const tokenText = (t) =>
    t.token.includes("\uFFFD") && Array.isArray(t.bytes)
      ? `‹${t.bytes.map((b) => b.toString(16).padStart(2, "0")).join(" ")}›`
      : t.token;

  // chat chunk -> [{token, logprob, top: [{token, logprob}]}]
  function chatTokens(choice) {
    const content = choice.logprobs && choice.logprobs.content;
    if (!content) return null;
    return content.map((c) => ({
      token: tokenText(c),
      logprob: c.logprob,
      top: (c.top_logprobs || []).map((a) => ({ token: tokenText(a), logprob: a.logprob })),
    }));
  }

  // completion chunk (legacy shape: tokens, token_logprobs, top_logprobs as {token: lp})
  function completionTokens(choice) {
    const lp = choice.logprobs;
    if (!lp || !lp.tokens) return null;
    return lp.tokens.map((token, i) => ({
      token,
      logprob: lp.token_logprobs[i],
      top: Object.entries((lp.top_logprobs || [])[i] || {}).map(([t, l]) => ({ token: t, logprob: l })),
    }));
  }

  // The sampler's side: the model's probabilities ("model") are those of its own
  // distribution, as OpenAI reports logprobs; the token was drawn after temperature, top-k
  // and top-p (npllm's order), from the "draw" column. Only the top alternatives are
  // known, so the draw is computed when they hold the whole candidate set (top_k at most
  // the alternatives shown, or temperature 1, where the mass of the rest is known).
  function samplerShares(alts, params) {
    const T = params.temperature ?? 1;
    const k = params.top_k || 0;
    const P = params.top_p ?? 1;
    const describe = `temperature ${T}, top_k ${k || "off"}, top_p ${P}`;
    if (params.presence_penalty || params.frequency_penalty || (params.repetition_penalty ?? 1) !== 1) {
      return { text: `draw not shown: the penalties changed the logits (${describe})` };
    }
    if (T === 0) return { shares: alts.map((_, i) => (i === 0 ? 1 : 0)), text: "greedy: temperature 0 takes the top token" };
    let q;
    if (k > 0 && k <= alts.length) {
      const w = alts.slice(0, k).map((a) => a.logprob / T);
      const top = Math.max(...w);
      const e = w.map((x) => Math.exp(x - top));
      const sum = e.reduce((x, y) => x + y, 0);
      q = alts.map((_, i) => (i < k ? e[i] / sum : 0));
    } else if (Math.abs(T - 1) < 1e-9 && !(k > alts.length)) {
      q = alts.map((a) => Math.exp(a.logprob)); // the rest's mass is 1 - their sum
    } else {
      return { text: `draw not shown for ${describe}: it needs top_k ≤ ${alts.length} (the alternatives shown) or temperature 1` };
    }
    if (P < 1) {
      let cum = 0;
      let last = -1;
      for (let i = 0; i < q.length; i++) {
        cum += q[i];
        if (cum >= P) {
          last = i;
          break;
        }
      }
      if (last < 0) return { text: `draw not shown for ${describe}: top_p keeps tokens beyond the ${alts.length} shown` };
      const kept = q.map((x, i) => (i <= last || x === q[last] ? x : 0));
      const mass = kept.reduce((x, y) => x + y, 0);
      q = kept.map((x) => x / mass);
    }
    return { shares: q, text: `drawn with ${describe}` };
  }

  // ---------------------------------------------------------------- the alternatives popover
  const pop = $("token-pop");
  let popChip = null;
  let pinned = false;

  function openPop(chip, pin) {
    if (popChip && popChip !== chip) popChip.setAttribute("aria-expanded", "false");
    popChip = chip;
    pinned = pin;
    chip.setAttribute("aria-expanded", "true");
    chip.setAttribute("aria-describedby", "token-pop");
    const info = chip.tokenInfo;
    pop.replaceChildren();
    const head = document.createElement("div");
    head.className = "head";
    const code = document.createElement("code");
    code.textContent = visible(info.text);
    head.append("chosen ", code, ` p = ${pct(info.p)}`);
    const rank = document.createElement("div");
    rank.className = "rank";
    rank.textContent =
      info.rank !== null
        ? `rank ${info.rank} of the ${info.alts.length} shown`
        : info.alts.length
          ? `not among the top ${info.alts.length}: rank > ${info.alts.length}`
          : "no alternatives requested (top_logprobs 0)";
    pop.append(head, rank);
    if (info.alts.length) {
      const draw = samplerShares(info.alts, (chip.closest("li") || {}).sampling || {});
      const table = document.createElement("table");
      const header = table.createTHead().insertRow();
      for (const [text, cls] of [["", "n"], ["token", ""], ["model", "p"], ["", ""], ["draw", "q"]]) {
        const th = document.createElement("th");
        th.textContent = text;
        th.className = cls;
        header.appendChild(th);
      }
      if (draw.shares) header.cells[4].title = "the probability the sampler drew it with";
      const rows = table.createTBody();
      info.alts.forEach((a, n) => {
        const row = rows.insertRow();
        if (n + 1 === info.rank) row.className = "chosen";
        const ap = Math.exp(a.logprob);
        const cell = (cls, text) => {
          const td = row.insertCell();
          td.className = cls;
          if (text !== undefined) td.textContent = text;
          return td;
        };
        cell("n", String(n + 1));
        const t = document.createElement("code");
        t.textContent = visible(a.token);
        cell("").appendChild(t);
        cell("p", pct(ap));
        const fill = document.createElement("span");
        fill.className = "barfill";
        fill.style.width = `${Math.max(1, ap * 100)}%`;
        cell("bar").appendChild(fill);
        const q = draw.shares ? draw.shares[n] : null;
        cell(q === 0 ? "q cut" : "q", q === null ? "–" : q === 0 ? "cut" : pct(q));
      });
      pop.appendChild(table);
      const rest = 1 - info.alts.reduce((sum, a) => sum + Math.exp(a.logprob), 0);
      const noteEl = document.createElement("div");
      noteEl.className = "note";
      noteEl.textContent = `every other token: ${pct(Math.max(0, rest))} (model)`;
      const drawEl = document.createElement("div");
      drawEl.className = "note draw";
      drawEl.textContent = draw.text;
      pop.append(noteEl, drawEl);
    }
    pop.hidden = false;
    place(chip);
  }

  function place(chip) {
    const r = chip.getBoundingClientRect();
    const w = pop.offsetWidth;
    const h = pop.offsetHeight;
    const left = Math.min(Math.max(4, r.left), window.innerWidth - w - 4);
    const below = r.bottom + 6;
    const top = below + h > window.innerHeight && r.top - h - 6 > 0 ? r.top - h - 6 : below;
    pop.style.left = `${left}px`;
    pop.style.top = `${top}px`;
  }

  function closePop() {
    if (popChip) {
      popChip.setAttribute("aria-expanded", "false");
      popChip.removeAttribute("aria-describedby");
    }
    popChip = null;
    pinned = false;
    pop.hidden = true;
  }

  const chipOf = (el) => (el && el.closest ? el.closest(".tok[role=button]") : null);
  document.addEventListener("mouseover", (e) => {
    const chip = chipOf(e.target);
    if (chip && !pinned) openPop(chip, false);
  });
  document.addEventListener("mouseout", (e) => {
    const chip = chipOf(e.target);
    if (chip && chip === popChip && !pinned && document.activeElement !== chip) closePop();
  });
  document.addEventListener("click", (e) => {
    const chip = chipOf(e.target);
    if (chip) {
      if (popChip === chip && pinned) closePop();
      else openPop(chip, true);
      chip.focus();
    } else if (!pop.contains(e.target)) {
      closePop();
    }
  });
  document.addEventListener("focusin", (e) => {
    const chip = chipOf(e.target);
    if (chip) openPop(chip, pinned);
  });
  document.addEventListener("focusout", (e) => {
    const chip = chipOf(e.target);
    if (chip && chip === popChip && !chipOf(e.relatedTarget)) closePop();
  });
  // roving focus: one tab stop per reply, arrow keys move between its tokens
  document.addEventListener("keydown", (e) => {
    const chip = chipOf(e.target);
    if (!chip) return;
    const chips = [...chip.parentElement.querySelectorAll(".tok[role=button]")];
    const i = chips.indexOf(chip);
    const go = { ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1, Home: 0, End: chips.length - 1 }[e.key];
    if (go !== undefined) {
      e.preventDefault();
      const next = chips[Math.min(Math.max(go, 0), chips.length - 1)];
      chip.tabIndex = -1;
      next.tabIndex = 0;
      next.focus();
    } else if (e.key === "Escape") {
      closePop();
    } else if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      if (popChip === chip && pinned) closePop();
      else openPop(chip, true);
    }
  });
  window.addEventListener("resize", () => popChip && place(popChip));
  document.addEventListener("scroll", () => popChip && place(popChip), true);

  // ---------------------------------------------------------------- the log
  const logOf = (mode) => $(mode === "chat" ? "chat-log" : "completion-log");

  function scrollDown() {
    const section = $(state.mode === "chat" ? "chat-view" : "completion-view");
    section.scrollTop = section.scrollHeight;
  }

  function addEntry(mode, role, text) {
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

  function note(mode, text) {
    const li = document.createElement("li");
    li.className = "msg note meta";
    li.textContent = text;
    logOf(mode).appendChild(li);
  }

  function showError(mode, e) {
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

  function showMeta(li, finish, usage, started, count) {
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
  function updateMeter(used) {
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

  async function sendChat(text) {
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

  // ---------------------------------------------------------------- completion
  async function sendCompletion(prompt) {
    const li = addEntry("completion", "prompt", "");
    const body = li.querySelector(".body");
    body.textContent = prompt;
    const out = new Output(body);
    const started = performance.now();
    let finish = null;
    let usage = null;
    const req = {
      model: state.model || "npllm",
      prompt,
      stream: true,
      stream_options: { include_usage: true },
      ...samplingParams("completion"),
    };
    li.sampling = req;
    try {
      await stream("/v1/completions", req, (chunk) => {
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.text || choice.logprobs) out.add(choice.text || "", completionTokens(choice));
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        updateMeter(usage ? usage.total_tokens : Math.ceil(prompt.length * state.tokensPerChar) + out.count);
      });
    } catch (e) {
      out.done();
      if (e.name !== "AbortError") {
        li.remove();
        showError("completion", e);
        return;
      }
      finish = "stopped";
    }
    out.done();
    showMeta(li, finish, usage, started, out.count);
    if (usage) updateMeter(usage.total_tokens);
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
})();

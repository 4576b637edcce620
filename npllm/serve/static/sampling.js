// The sampling controls (what a request sends) and the sampler's side of a token (the
// probability it was drawn with, shown in the alternatives popover).

import { $, COMPLETIONS_MAX_LOGPROBS } from "./server.js";

// ---------------------------------------------------------------- sampling controls
export function numberField(id) {
  const raw = $(id).value.trim();
  if (raw === "") return null;
  const v = Number(raw);
  return Number.isFinite(v) ? v : raw; // an unreadable value is sent as typed: the server names it
}

export function samplingParams(endpoint) {
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
// The sampler's side: the model's probabilities ("model") are those of its own
// distribution, as OpenAI reports logprobs; the token was drawn after temperature, top-k
// and top-p (npllm's order), from the "draw" column. Only the top alternatives are
// known, so the draw is computed when they hold the whole candidate set (top_k at most
// the alternatives shown, or temperature 1, where the mass of the rest is known).
export function samplerShares(alts, params) {
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

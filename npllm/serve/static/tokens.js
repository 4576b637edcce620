// Generated tokens: the chip of each, coloured by its probability, the streaming text of
// a reply, and the tokens of a chat or a completion chunk.

import { scrollDown } from "./log.js";

// ---------------------------------------------------------------- tokens
export const visible = (s) => s.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
export const pct = (p) => (p >= 0.9995 ? "100%" : p >= 0.0005 ? `${(p * 100).toFixed(1)}%` : p > 0 ? "<0.1%" : "0%");

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
export class Output {
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
export function chatTokens(choice) {
  const content = choice.logprobs && choice.logprobs.content;
  if (!content) return null;
  return content.map((c) => ({
    token: tokenText(c),
    logprob: c.logprob,
    top: (c.top_logprobs || []).map((a) => ({ token: tokenText(a), logprob: a.logprob })),
  }));
}

// completion chunk (legacy shape: tokens, token_logprobs, top_logprobs as {token: lp})
export function completionTokens(choice) {
  const lp = choice.logprobs;
  if (!lp || !lp.tokens) return null;
  return lp.tokens.map((token, i) => ({
    token,
    logprob: lp.token_logprobs[i],
    top: Object.entries((lp.top_logprobs || [])[i] || {}).map(([t, l]) => ({ token: t, logprob: l })),
  }));
}

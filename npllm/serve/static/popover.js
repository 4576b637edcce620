// The alternatives popover: a token chip's rank, probability and alternatives, opened on
// hover, tap or focus, with roving focus between a reply's chips.

import { $ } from "./server.js";
import { samplerShares } from "./sampling.js";
import { pct, visible } from "./tokens.js";

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

export function closePop() {
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

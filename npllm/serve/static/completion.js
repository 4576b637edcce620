// Completion mode: a prompt continued by /v1/completions, streamed.

import { state, stream } from "./server.js";
import { samplingParams } from "./sampling.js";
import { completionTokens, Output } from "./tokens.js";
import { addEntry, showError, showMeta, updateMeter } from "./log.js";

// ---------------------------------------------------------------- completion
export async function sendCompletion(prompt) {
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

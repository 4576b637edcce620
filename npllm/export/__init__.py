"""Out of npllm and back: a run's model written for other programs, each file in the form
that program's own loader reads, and a Hugging Face GPT-2 brought in as an npllm run.

- `hf`: a Hugging Face folder (`config.json`, `model.safetensors`, tokenizer files) that
  `transformers.AutoModelForCausalLM` and `AutoTokenizer` load.
- `gguf`: one GGUF file for llama.cpp's `gpt2` architecture, F32 or Q8_0.
- `onnx`: an ONNX graph `input_ids -> logits`, float32 or with int8 weights.
- `import_hf`: a Hugging Face GPT-2-family folder -> an npllm run folder.
- `tokenizer`: npllm's tokenizers in Hugging Face's and llama.cpp's terms.

All of them start from what `gpt2_family` checks: a GPT-2-shaped model (learned positions,
LayerNorm, a plain MLP), the family these formats share with npllm.
"""

from __future__ import annotations

from typing import Any

from npllm import arch
from npllm.errors import ConfigError


def require(module: str, target: str) -> Any:
    """Import `module` (a package of the `export` extra) or say in one line how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"exporting to {target} needs the {module} package: pip install 'npllm[export]'"
        ) from None


def gpt2_family(config: Any, target: str) -> None:
    """Refuse, in one line naming the reason, a model outside the GPT-2 family."""
    c = config
    why = None
    if c.pos_embedding != "learned":
        why = "it uses RoPE (the Llama family)"
    elif c.norm != "layernorm":
        why = f"it uses {c.norm}"
    elif arch.activation(c) == "swiglu":
        why = "its MLP is SwiGLU"
    elif c.n_kv_head not in (None, c.n_head):
        why = "it uses grouped-query attention"
    elif c.sliding_window:
        why = "it attends through a sliding window"
    if why:
        raise ConfigError(
            f"cannot export to {target}: {why}, and only GPT-2-family models (learned "
            "positions, LayerNorm, GELU/ReLU MLP) are exported; train a GPT-2-shaped model"
        )

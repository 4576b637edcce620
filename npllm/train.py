"""The training loop: `TrainConfig`, the presets, and `train()`.

One step (nanoGPT's train.py, without the distributed parts): random windows from the
memmapped train tokens -> `GPT` forward/backward, `gradient_accumulation_steps` times ->
`clip_grad_norm` -> AdamW at the warmup + cosine learning rate. Every `eval_interval`
steps (and at the end) the mean loss over `eval_iters` batches of each split is logged and
the `last` checkpoint written, plus `best` when val improved (`npllm.checkpoint`).

Chat data (`npllm prepare --chat`) trains the same way on packed conversations whose
targets outside the assistant mask are the ignore index, so the losses (train, val) are
over assistant tokens only. `init_from` starts from another run's weights instead of a
fresh init (fine-tuning), growing the token embedding when the data's tokenizer added
special tokens to that run's.

Robustness: a non-finite loss or gradient norm stops the run before the optimizer step
(`TrainingDiverged`), so no checkpoint ever holds the diverged weights; Ctrl-C (SIGINT)
finishes the current step, writes the `last` checkpoint and stops (`TrainingInterrupted`),
so `--resume` continues from there; a second Ctrl-C stops at once.

Reproducibility: all randomness comes from three generators derived from `seed`: the
model's init/dropout streams (inside `GPT`), the training batches, and the evaluation
batches (drawn afresh from the same seed at each evaluation, so evaluating never moves
the training streams). A checkpoint stores the first two states, so a resumed run
continues bit for bit where a straight run would be.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npllm.checkpoint import (
    ensure_writable_dir,
    load_checkpoint,
    read_record,
    save_checkpoint,
    write_bytes_atomic,
)
from npllm.errors import CheckpointError, ConfigError, DataError, NpllmError


class TrainingDiverged(NpllmError, RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run after writing its `last` checkpoint (the message says so)."""


RUN_FILES = ("last.json", "best.json", "metrics.jsonl")


@dataclass
class TrainConfig:
    """Training hyperparameters (the model's are in `GPTConfig`). Defaults are cpu-small."""

    batch_size: int = 12
    max_iters: int = 2000
    lr_decay_iters: int | None = None  # None: max_iters
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    decay_lr: bool = True  # False: constant learning_rate
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0: no clipping
    gradient_accumulation_steps: int = 1
    eval_interval: int = 250
    eval_iters: int = 200
    log_interval: int = 10
    seed: int = 1337

    def validate(self) -> None:
        positive = (
            "batch_size",
            "gradient_accumulation_steps",
            "eval_interval",
            "eval_iters",
            "log_interval",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        for name in ("max_iters", "warmup_iters", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}"
                )
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a number >= 0, got {value}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"--{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.decay_lr and self.decay_iters < self.warmup_iters:
            raise ConfigError(
                f"the learning rate would finish decaying at step {self.decay_iters} "
                "(--lr-decay-iters, default --max-iters) before its warmup ends "
                f"(--warmup-iters {self.warmup_iters}); lower --warmup-iters or "
                "raise --lr-decay-iters"
            )

    @property
    def decay_iters(self) -> int:
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters

    def lr_at(self, it: int) -> float:
        from npllm.optim import cosine_lr

        if not self.decay_lr:
            return self.learning_rate
        return cosine_lr(it, self.learning_rate, self.warmup_iters, self.decay_iters, self.min_lr)


# Model fields (GPTConfig) and training fields (TrainConfig) together; the data fixes
# vocab_size unless a preset or flag asks for a larger one.
PRESETS: dict[str, dict[str, Any]] = {
    # nanoGPT's CPU run of train_shakespeare_char (its README): ~0.8M parameters
    "cpu-small": dict(
        n_layer=4,
        n_head=4,
        n_embd=128,
        block_size=64,
        dropout=0.0,
        batch_size=12,
        max_iters=2000,
        lr_decay_iters=None,
        learning_rate=1e-3,
        min_lr=1e-4,
        warmup_iters=100,
        beta1=0.9,
        beta2=0.99,
        weight_decay=0.1,
        grad_clip=1.0,
        eval_interval=250,
        eval_iters=200,
    ),
    # GuppyLM's shape, meant for a BPE vocabulary (`npllm prepare --tokenizer bpe`)
    "guppy": dict(
        n_layer=6,
        n_head=6,
        n_embd=384,
        mlp_hidden=768,
        activation="relu",
        block_size=128,
        dropout=0.1,
        batch_size=32,
        max_iters=5000,
        lr_decay_iters=None,
        learning_rate=3e-4,
        min_lr=3e-5,
        warmup_iters=200,
        beta1=0.9,
        beta2=0.95,
        weight_decay=0.1,
        grad_clip=1.0,
        eval_interval=250,
        eval_iters=100,
    ),
    # A chat model that a 2-core CPU trains in about 15 minutes on `chat-demo` with a
    # BPE vocabulary of 1024 (README, "Chat"); the loss counts assistant tokens only.
    "chat": dict(
        n_layer=4,
        n_head=4,
        n_embd=128,
        block_size=128,
        dropout=0.0,
        batch_size=16,
        max_iters=3000,
        lr_decay_iters=None,
        learning_rate=2e-3,
        min_lr=2e-4,
        warmup_iters=100,
        beta1=0.9,
        beta2=0.99,
        weight_decay=0.1,
        grad_clip=1.0,
        eval_interval=250,
        eval_iters=50,
    ),
    # cpu-small's size and schedule in today's architecture (the Llama family: RoPE,
    # RMSNorm, SwiGLU, grouped-query attention with 2 key/value heads, no biases)
    "llama-small": dict(
        n_layer=4,
        n_head=4,
        n_kv_head=2,
        n_embd=128,
        mlp_hidden=352,
        block_size=64,
        bias=False,
        pos_embedding="rope",
        norm="rmsnorm",
        mlp="swiglu",
        dropout=0.0,
        batch_size=12,
        max_iters=2000,
        lr_decay_iters=None,
        learning_rate=1e-3,
        min_lr=1e-4,
        warmup_iters=100,
        beta1=0.9,
        beta2=0.99,
        weight_decay=0.1,
        grad_clip=1.0,
        eval_interval=250,
        eval_iters=200,
    ),
}
DEFAULT_PRESET = "cpu-small"


def scaled_warmup(values: dict[str, Any]) -> int | None:
    """A preset's warmup shortened to a tenth of the decay steps when it is longer
    (so `--max-iters 20` trains), or None when it fits as it is."""
    if values.get("decay_lr") is False:
        return None  # a constant learning rate has no warmup
    decay = values.get("lr_decay_iters") or values.get("max_iters", 0)
    warmup = values.get("warmup_iters", 0)
    return decay // 10 if warmup > decay // 10 else None


def model_fields() -> list[dataclasses.Field]:
    from npllm.gpt import GPTConfig

    return list(dataclasses.fields(GPTConfig))


def split_overrides(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat {field: value} into (model fields, training fields)."""
    names = {f.name for f in model_fields()}
    return (
        {k: v for k, v in values.items() if k in names},
        {k: v for k, v in values.items() if k not in names},
    )


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


@dataclass
class TrainResult:
    iter: int
    train_loss: float
    val_loss: float
    best_val_loss: float
    seconds: float  # wall time of the training, summed over resumes


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over an existing one unless told to overwrite it."""
    if resume and overwrite:
        raise ConfigError("pass either --resume or --overwrite, not both")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file; pass a folder for the run")
    held = [n for n in RUN_FILES if (run_dir / n).exists()]
    if held and not resume and not overwrite:
        raise CheckpointError(
            f"{run_dir} already holds a run ({', '.join(held)}); pass --resume "
            "to continue it, --overwrite to start again, or another --out"
        )


def clear_run(run_dir: Path) -> None:
    """Remove what a run writes, and nothing else the folder may hold."""
    for pattern in (
        "last.json",
        "best.json",
        "last-*.safetensors",
        "best-*.safetensors",
        "metrics.jsonl",
        "loss.png",
    ):
        for p in run_dir.glob(pattern):
            p.unlink()


def _rewrite_metrics_until(path: Path, last_iter: int) -> None:
    """On resume, drop what a killed run logged after its last checkpoint."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["iter"] <= last_iter:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    write_bytes_atomic(path, "".join(kept).encode("utf-8"))


def resume_configs(run_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(model config, train config, data folder) recorded in a run's `last` checkpoint."""
    info = read_record(run_dir, "last")
    try:
        return dict(info["model_config"]), dict(info["train_config"]), str(info["data"]["dir"])
    except (KeyError, TypeError):
        raise CheckpointError(
            f"the checkpoint in {run_dir} lacks its configs; it is corrupt. "
            "Start again with --overwrite"
        ) from None


def compatible_tokenizers(base: Any, data: Any) -> bool:
    """True when `data` is `base` with zero or more special tokens appended."""
    a, b = base.to_dict(), data.to_dict()
    a_specials, b_specials = a.pop("specials", []), b.pop("specials", [])
    return a == b and b_specials[: len(a_specials)] == a_specials


def init_weights(run_dir: str | os.PathLike, model: Any, data_tokenizer: Any) -> str:
    """Load the weights of a run's best (else last) checkpoint into `model`, whose
    vocabulary may be larger (new rows keep their fresh init); returns which one."""
    from npllm.tokenizers import tokenizer_from_dict

    name = "best" if (Path(run_dir) / "best.json").is_file() else "last"
    ck = load_checkpoint(run_dir, name)
    try:
        base = tokenizer_from_dict(ck.info["tokenizer"])
    except KeyError:
        raise CheckpointError(f"the checkpoint in {run_dir} lacks its tokenizer") from None
    if not compatible_tokenizers(base, data_tokenizer):
        raise DataError(
            f"the data was not tokenized with the tokenizer of {run_dir}; prepare it with "
            f"`npllm prepare --tokenizer-from {run_dir}`"
        )
    state = dict(ck.model_state)
    own = model.state_dict()
    key = "transformer.wte.weight"
    old, new = state[key], own[key]
    if old.shape[0] < new.shape[0] and old.shape[1:] == new.shape[1:]:
        grown = new.copy()
        grown[: old.shape[0]] = old
        state[key] = grown
        if "lm_head.weight" in state:
            state["lm_head.weight"] = grown
    try:
        model.load_state_dict(state)
    except CheckpointError as e:
        raise CheckpointError(
            f"the checkpoint in {run_dir} does not fit this model ({e}); drop the model flags "
            "with --init-from: the model keeps that run's shape"
        ) from None
    return name


class _SigintFlag:
    """While active (main thread only), the first Ctrl-C sets `.set` for the loop to act on
    at the end of a step; a second one raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.set = False
        self._old: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __enter__(self) -> _SigintFlag:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    model_config: Any,
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    init_from: str | os.PathLike | None = None,
    progress: bool | None = None,
    echo: bool = True,
) -> TrainResult:
    """Train a `GPT(model_config)` on a prepared data folder, writing checkpoints and
    `metrics.jsonl` to `run_dir`. With `resume`, continue from `run_dir`'s `last`
    checkpoint (whose configs the caller passes back, possibly with a new `max_iters`);
    with `init_from`, start from another run's weights. `progress`: tqdm bar on stderr
    (None: only when stderr is a terminal); `echo`: print the evaluations to stdout."""
    from tqdm import tqdm

    from npllm.autograd import no_grad
    from npllm.data import check_length, get_batch, load_data_tokenizer, load_meta, load_split
    from npllm.gpt import GPT
    from npllm.optim import clip_grad_norm

    config.validate()
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume, overwrite)
    if resume and init_from is not None:
        raise ConfigError("--resume continues the run's own weights; drop --init-from")
    meta = load_meta(data_dir)
    T, B, accum = model_config.block_size, config.batch_size, config.gradient_accumulation_steps
    if meta.get("chat"):
        from npllm.chat_data import get_chat_batch, load_chat_split, window_starts

        splits = {}
        for split in ("train", "val"):
            tokens, mask, starts = load_chat_split(data_dir, split)
            splits[split] = (tokens, mask, window_starts(tokens, starts, T, split))

        def batch(split: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
            return get_chat_batch(*splits[split], B, T, rng)
    else:
        splits = {split: load_split(data_dir, split) for split in ("train", "val")}
        for split, data in splits.items():
            check_length(data, T, split)

        def batch(split: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
            return get_batch(splits[split], B, T, rng)

    if model_config.vocab_size < meta["vocab_size"]:
        raise ConfigError(
            f"--vocab-size {model_config.vocab_size} is smaller than the data's "
            f"vocabulary ({meta['vocab_size']}); drop the flag"
        )
    tokenizer = load_data_tokenizer(data_dir)
    ensure_writable_dir(run_dir, "--out")

    model = GPT(model_config, seed=config.seed)
    init_note = None
    if init_from is not None:
        init_note = {"run": str(Path(init_from).resolve())}
        init_note["checkpoint"] = init_weights(init_from, model, tokenizer)
    optimizer = model.configure_optimizers(
        config.weight_decay, config.learning_rate, (config.beta1, config.beta2)
    )
    params = model.parameters()
    batch_rng = np.random.default_rng([1, config.seed])
    start, best_val, elapsed0 = 0, math.inf, 0.0
    metrics_path = run_dir / "metrics.jsonl"
    saved_at: int | None = None  # iteration of the newest `last` checkpoint
    if resume:
        ck = load_checkpoint(run_dir, "last")
        try:
            model.load_state_dict(ck.model_state)
        except CheckpointError as e:
            raise CheckpointError(
                f"the checkpoint in {run_dir} does not fit this model ({e}); "
                "resume with the run's own model flags or use --overwrite"
            ) from None
        optimizer.load_state_dict(ck.optimizer_state)
        batch_rng.bit_generator.state = ck.info["rng"]["batch"]
        model.rng.bit_generator.state = ck.info["rng"]["dropout"]
        start, elapsed0 = int(ck.info["iter"]), float(ck.info["elapsed"])
        best_val = float(ck.info["best_val_loss"])
        init_note = ck.info.get("init_from")
        saved_at = start
        _rewrite_metrics_until(metrics_path, start)
        if start >= config.max_iters:
            raise ConfigError(
                f"the run in {run_dir} is already at iteration {start}; pass a "
                "larger --max-iters to train further"
            )
    elif overwrite:
        clear_run(run_dir)
    metrics = open(metrics_path, "a", encoding="utf-8")

    def log(record: dict[str, Any]) -> None:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()

    def estimate_loss() -> dict[str, float] | None:
        """Mean losses over `eval_iters` batches per split; None if Ctrl-C came."""
        model.eval()
        eval_rng = np.random.default_rng([2, config.seed])  # same batches at every evaluation
        out = {}
        with no_grad():
            for split in ("train", "val"):
                losses = []
                for _ in range(config.eval_iters):
                    if sigint.set:
                        model.train()
                        return None
                    losses.append(model(*batch(split, eval_rng))[1].item())
                out[split] = float(np.mean(losses))
        model.train()
        return out

    def save(name: str, it: int, losses: dict[str, float], elapsed: float) -> None:
        nonlocal saved_at
        info = {
            "iter": it,
            "elapsed": elapsed,
            "train_loss": losses["train"],
            "val_loss": losses["val"],
            "best_val_loss": best_val,
            "model_config": dataclasses.asdict(model_config),
            "train_config": dataclasses.asdict(config),
            "tokenizer": tokenizer.to_dict(),
            "data": {"dir": str(Path(data_dir).resolve()), "meta": meta},
            "rng": {
                "batch": batch_rng.bit_generator.state,
                "dropout": model.rng.bit_generator.state,
            },
        }
        if init_note is not None:
            info["init_from"] = init_note
        save_checkpoint(run_dir, name, model.state_dict(), optimizer.state_dict(), info)
        if name == "last":
            saved_at = it

    def say(text: str) -> None:
        if echo:
            bar.write(text, file=sys.stdout)

    def diverged(what: str, it: int, lr: float) -> TrainingDiverged:
        kept = (
            f"the last good checkpoint (iteration {saved_at}) is kept in {run_dir}"
            if saved_at is not None
            else "no checkpoint had been written yet"
        )
        return TrainingDiverged(
            f"{what} became non-finite at iteration {it} (learning rate {lr:.3g}); "
            f"training stopped and {kept}. Lower --learning-rate (keep --grad-clip on, or "
            "raise --warmup-iters), then --resume from that checkpoint or start with --overwrite"
        )

    def interrupted(it: int, losses: dict[str, float], elapsed: float) -> TrainingInterrupted:
        save("last", it, losses, elapsed)
        return TrainingInterrupted(
            f"stopped at iteration {it} and saved the last checkpoint; continue with "
            f"`npllm train --out {run_dir} --resume`"
        )

    bar = tqdm(
        total=config.max_iters,
        initial=start,
        file=sys.stderr,
        unit="it",
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    )
    t0, losses = time.perf_counter(), {"train": math.nan, "val": math.nan}
    sigint = _SigintFlag()
    with sigint:
        try:
            if start == 0:
                got = estimate_loss()
                if got is None:
                    raise interrupted(0, losses, elapsed0)
                losses = got
                log(
                    {
                        "iter": 0,
                        "train_loss": losses["train"],
                        "val_loss": losses["val"],
                        "elapsed": elapsed0,
                    }
                )
                say(f"iter 0: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            model.train()
            t_log, tokens = time.perf_counter(), 0
            for it in range(start, config.max_iters):
                lr = config.lr_at(it)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = 0.0
                for _ in range(accum):
                    x, y = batch("train", batch_rng)
                    _, loss = model(x, y)
                    (loss * (1.0 / accum)).backward()
                    loss_sum += loss.item()
                n, loss_avg = it + 1, loss_sum / accum
                if not math.isfinite(loss_avg):
                    raise diverged("the training loss", n, lr)
                norm = clip_grad_norm(params, config.grad_clip) if config.grad_clip > 0 else None
                if norm is not None and not math.isfinite(norm):
                    raise diverged("the gradient norm", n, lr)
                optimizer.step()
                optimizer.zero_grad()
                tokens += B * T * accum
                if n % config.log_interval == 0 or n == config.max_iters:
                    now = time.perf_counter()
                    tok_s = tokens / max(now - t_log, 1e-9)
                    t_log, tokens = now, 0
                    log(
                        {
                            "iter": n,
                            "loss": loss_avg,
                            "lr": lr,
                            "grad_norm": norm,
                            "tokens_per_s": tok_s,
                            "elapsed": elapsed0 + now - t0,
                        }
                    )
                    bar.set_postfix(
                        loss=f"{loss_avg:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", refresh=False
                    )
                bar.update(1)
                if n % config.eval_interval == 0 or n == config.max_iters:
                    got = estimate_loss()
                    elapsed = elapsed0 + time.perf_counter() - t0
                    if got is None:
                        raise interrupted(n, losses, elapsed)
                    losses = got
                    if not all(map(math.isfinite, losses.values())):
                        raise diverged("the evaluated loss", n, lr)
                    improved = losses["val"] < best_val
                    best_val = min(best_val, losses["val"])
                    log(
                        {
                            "iter": n,
                            "train_loss": losses["train"],
                            "val_loss": losses["val"],
                            "elapsed": elapsed,
                        }
                    )
                    say(
                        f"iter {n}: train loss {losses['train']:.4f}, val loss "
                        f"{losses['val']:.4f}{' (best)' if improved else ''}, {elapsed:.1f} s"
                    )
                    if improved:
                        save("best", n, losses, elapsed)
                    save("last", n, losses, elapsed)
                    t_log, tokens = time.perf_counter(), 0  # evaluation time is not speed
                elif sigint.set:
                    raise interrupted(n, losses, elapsed0 + time.perf_counter() - t0)
        finally:
            bar.close()
            metrics.close()
    return TrainResult(
        config.max_iters,
        losses["train"],
        losses["val"],
        best_val,
        elapsed0 + time.perf_counter() - t0,
    )

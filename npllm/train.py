"""The training loop, `train()` (its configs and presets are in `npllm.config`, the run
folder's handling in `npllm.runs`).

One step (nanoGPT's train.py): random windows from the memmapped train tokens -> `GPT`
forward/backward, `gradient_accumulation_steps` times -> `clip_grad_norm` -> AdamW at the
warmup + cosine learning rate. Every `eval_interval` steps (and at the end) the mean loss
over `eval_iters` batches of each split is logged and the `last` checkpoint written, plus
`best` when val improved (`npllm.checkpoint`).

Data-parallel over MPI (`mpiexec -n N npllm train ...`, `npllm.distributed`): the `world`
hooks below split each global batch's rows over the ranks, sum the gradients in one flat
buffer and shard the evaluation; every rank takes the same step and only rank 0 writes.
In one process they do nothing.

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

from npllm.checkpoint import load_checkpoint, save_checkpoint
from npllm.config import TrainConfig
from npllm.distributed import World, ZeroAdamW
from npllm.errors import CheckpointError, ConfigError, NpllmError
from npllm.io import ensure_writable_dir
from npllm.runs import check_run_dir, clear_run, init_weights, rewrite_metrics_until


class TrainingDiverged(NpllmError, RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run after writing its `last` checkpoint (the message says so)."""


@dataclass
class TrainResult:
    iter: int
    train_loss: float
    val_loss: float
    best_val_loss: float
    seconds: float  # wall time of the training, summed over resumes


def evaluate(
    model: Any, batch: Any, iters: int, seed: int, stop: Any = None, world: World | None = None
) -> dict[str, float] | None:
    """Mean loss over `iters` batches of each split, drawn from a generator seeded afresh
    (the same batches at every evaluation, and the training streams never move); None
    when `stop()` turns true on the way (Ctrl-C). Over MPI each rank draws every batch and
    computes every `world.size`-th one; the ranks' sums are reduced."""
    from npllm.autograd import no_grad

    world = World() if world is None else world
    model.eval()
    rng = np.random.default_rng([2, seed])
    losses: dict[str, list[float]] = {"train": [], "val": []}
    stopped = False
    try:
        with no_grad():
            for split in ("train", "val"):
                for i in range(iters):
                    if stop is not None and stop():
                        stopped = True
                        break
                    x, y = batch(split, rng)
                    if i % world.size == world.rank:
                        losses[split].append(model(x, y)[1].item())
                if stopped:
                    break
    finally:
        model.train()
    return world.mean_losses(losses, iters, stopped)


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
    world: World | None = None,
    zero1: bool = False,
) -> TrainResult:
    """Train a `GPT(model_config)` on a prepared data folder, writing checkpoints and
    `metrics.jsonl` to `run_dir`. With `resume`, continue from `run_dir`'s `last`
    checkpoint (whose configs the caller passes back, possibly with a new `max_iters`);
    with `init_from`, start from another run's weights. `progress`: tqdm bar on stderr
    (None: only when stderr is a terminal); `echo`: print the evaluations to stdout.
    `world`: the MPI ranks training together (`npllm.distributed.init()`; default this
    process alone), of which only rank 0 writes and prints; `zero1`: shard AdamW's moments
    over the ranks (ZeRO stage 1; nothing changes in one process)."""
    from tqdm import tqdm

    from npllm.data import batch_sampler, load_data_tokenizer, load_meta
    from npllm.gpt import GPT
    from npllm.optim import clip_grad_norm

    config.validate()
    run_dir = Path(run_dir)
    world = World() if world is None else world
    world.check_batch_size(config.batch_size)
    if world.is_main:
        check_run_dir(run_dir, resume, overwrite)
    if resume and init_from is not None:
        raise ConfigError("--resume continues the run's own weights; drop --init-from")
    meta = load_meta(data_dir)
    T, B, accum = model_config.block_size, config.batch_size, config.gradient_accumulation_steps
    batch = batch_sampler(data_dir, meta, B, T)
    if model_config.vocab_size < meta["vocab_size"]:
        raise ConfigError(
            f"--vocab-size {model_config.vocab_size} is smaller than the data's "
            f"vocabulary ({meta['vocab_size']}); drop the flag"
        )
    tokenizer = load_data_tokenizer(data_dir)
    if world.is_main:
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
        if start >= config.max_iters:
            raise ConfigError(
                f"the run in {run_dir} is already at iteration {start}; pass a "
                "larger --max-iters to train further"
            )
        if world.is_main:
            rewrite_metrics_until(metrics_path, start)
    elif overwrite and world.is_main:
        clear_run(run_dir)
    world.check_same("the configs", (dataclasses.asdict(model_config), dataclasses.asdict(config)))
    world.broadcast_parameters(params)  # every rank starts from rank 0's weights
    world.shard_dropout(model.rng)
    grads = world.grad_buffer(params)
    if zero1 and world.size > 1:
        optimizer = ZeroAdamW(optimizer, grads)
    metrics = open(metrics_path if world.is_main else os.devnull, "a", encoding="utf-8")

    def log(record: dict[str, Any]) -> None:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()

    def estimate_loss() -> dict[str, float] | None:
        return evaluate(
            model, batch, config.eval_iters, config.seed, stop=lambda: sigint.set, world=world
        )

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
        if name == "last":
            saved_at = it
        opt_state = optimizer.state_dict()  # ZeRO-1 gathers it on rank 0: every rank calls
        if world.is_main:
            save_checkpoint(run_dir, name, model.state_dict(), opt_state, info)

    def say(text: str) -> None:
        if echo and world.is_main:
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
        disable=(None if progress is None else not progress) or not world.is_main,
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
                grads.attach()
                loss_sum = 0.0
                for _ in range(accum):
                    # this rank's rows of the global batch, and their share of its targets
                    x, y, share = world.shard(*batch("train", batch_rng))
                    _, loss = model(x, y)
                    (loss * (share / accum)).backward()
                    loss_sum += loss.item() * share
                loss_sum, stop = grads.allreduce(loss_sum, sigint.set)  # sums over ranks
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
                elif stop:
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

"""`npllm train`: train a GPT on a prepared data folder (`--data DIR`) or straight from a
corpus (`--corpus NAME|FILE`, prepared into RUN/data first; `chat-demo` as conversations).
Every field of `GPTConfig` and `TrainConfig` is a flag (`--n-layer 2`, `--max-iters 200`);
precedence, lowest first: the defaults, the preset, then the flags given. `--resume`
continues the run's `last` checkpoint with its recorded configs, where flags may change
training fields such as `--max-iters` but not the model. `--init-from RUN` fine-tunes: the
model takes RUN's shape and weights (its vocabulary grown when the data's tokenizer added
special tokens to RUN's, as `npllm prepare --tokenizer-from RUN` does), from step 0.

A preset's warmup longer than a tenth of the run is shortened to that tenth, with a note
(an explicit --warmup-iters is kept as given).

`mpiexec -n N npllm train ...` (or `srun --mpi=pmi2`) trains one model on N processes,
data-parallel (`npllm.distributed`): --batch-size is then the global batch, split over
the ranks; rank 0 prepares a --corpus and alone prints and writes; `--zero1` shards
AdamW's moments; an error in one rank stops them all."""

from __future__ import annotations

import argparse

from npllm.commands.prepare import add_corpus_arguments

# npllm.config.PRESETS, listed here to keep --help light
PRESET_NAMES = ("cpu-small", "guppy", "chat", "llama-small")


def _int_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _str_or_none(text: str) -> str | None:
    return None if text.lower() == "none" else text


def _json_or_none(text: str):
    import json

    from npllm.errors import ConfigError

    if text.lower() == "none":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(
            f'--rope-scaling takes JSON such as \'{{"rope_type": "linear", "factor": 2}}\' '
            f"or none, got {text!r}"
        ) from None


# (field, type, help) for every field of GPTConfig, then of TrainConfig; a test checks
# that this table and the dataclasses agree.
MODEL_FLAGS: list[tuple[str, object, str]] = [
    (
        "vocab_size",
        int,
        "vocabulary size (default: the data's; larger pads the embedding); "
        "with --corpus and --tokenizer bpe, also the BPE size",
    ),
    ("block_size", int, "context length in tokens"),
    ("n_layer", int, "transformer blocks"),
    ("n_head", int, "attention heads (must divide n_embd)"),
    ("n_embd", int, "embedding width"),
    ("dropout", float, "dropout probability while training"),
    ("bias", bool, "biases in Linear and LayerNorm layers"),
    ("mlp_hidden", _int_or_none, "MLP hidden width (none: 4 * n_embd)"),
    ("activation", str, "MLP activation: gelu (tanh approximation), gelu_exact or relu"),
    ("pos_embedding", str, "positions: learned (GPT-2) or rope (Llama; transformers' names)"),
    ("rope_theta", float, "RoPE base"),
    ("rope_scaling", _json_or_none, "RoPE scaling, transformers' JSON dict (linear/dynamic/yarn)"),
    ("norm", str, "layernorm or rmsnorm"),
    ("norm_eps", float, "the norms' epsilon"),
    ("mlp", _str_or_none, "MLP kind: none (c_fc, activation, c_proj) or swiglu"),
    ("n_kv_head", _int_or_none, "key/value heads, grouped-query attention (none: n_head)"),
    ("sliding_window", _int_or_none, "attend to the last W positions only (none: all)"),
    ("tie_embeddings", bool, "lm_head shares the token embedding"),
]
TRAIN_FLAGS: list[tuple[str, object, str]] = [
    (
        "batch_size",
        int,
        "sequences per micro-batch, in all: under mpiexec the global batch, whose rows "
        "are split over the ranks",
    ),
    ("max_iters", int, "optimizer steps in total"),
    (
        "lr_decay_iters",
        _int_or_none,
        "step where the cosine decay reaches min_lr (none: max_iters)",
    ),
    ("learning_rate", float, "peak learning rate"),
    ("min_lr", float, "final learning rate"),
    ("warmup_iters", int, "linear warmup steps"),
    ("decay_lr", bool, "warmup + cosine decay (--no-decay-lr: constant learning rate)"),
    ("weight_decay", float, "AdamW weight decay on 2-D weights"),
    ("beta1", float, "AdamW beta1"),
    ("beta2", float, "AdamW beta2"),
    ("grad_clip", float, "clip the global gradient norm to this (0: off)"),
    (
        "gradient_accumulation_steps",
        int,
        "micro-batches per optimizer step (a step sees batch_size x this sequences, "
        "whatever the number of MPI ranks)",
    ),
    ("eval_interval", int, "evaluate and checkpoint every this many steps"),
    ("eval_iters", int, "batches per split at each evaluation"),
    ("log_interval", int, "write the training loss to metrics.jsonl every this many steps"),
    ("seed", int, "seed of the init, dropout and batch streams"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("data (one of)")
    src.add_argument("--data", metavar="DIR", help="a folder written by `npllm prepare`")
    add_corpus_arguments(src, corpus_default=None, vocab_flag=False)
    run = p.add_argument_group("run")
    run.add_argument(
        "--out", required=True, metavar="RUN", help="run folder: checkpoints, metrics.jsonl"
    )
    run.add_argument(
        "--preset",
        default="cpu-small",
        metavar="NAME",
        help=f"starting config: {', '.join(PRESET_NAMES)} (default cpu-small)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, with its "
        "configs; training flags (e.g. --max-iters) may change them",
    )
    run.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    run.add_argument(
        "--init-from",
        default=None,
        metavar="RUN",
        help="start from the weights of another run (its best checkpoint) and keep its "
        "model shape and tokenizer: fine-tuning, e.g. a text model on chat data",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar or evaluation lines")
    run.add_argument(
        "--zero1",
        action="store_true",
        help="under mpiexec: each rank keeps the AdamW moments of 1/N of the parameters "
        "(ZeRO stage 1: less memory a rank, the same training; checkpoints stay whole)",
    )
    for title, table in (("model", MODEL_FLAGS), ("training", TRAIN_FLAGS)):
        group = p.add_argument_group(f"{title} config (defaults from the preset)")
        for name, typ, help_text in table:
            flag = "--" + name.replace("_", "-")
            if typ is bool:
                group.add_argument(
                    flag,
                    dest=name,
                    action=argparse.BooleanOptionalAction,
                    default=argparse.SUPPRESS,
                    help=help_text,
                )
            else:
                group.add_argument(
                    flag,
                    dest=name,
                    type=typ,
                    default=argparse.SUPPRESS,
                    metavar={float: "X", str: "NAME"}.get(typ, "N"),
                    help=help_text,
                )


def resolve(args: argparse.Namespace, world=None):
    """(data folder, GPTConfig, TrainConfig) from the flags, the preset, the data and, on
    --resume, the run's checkpoint. Over MPI (`world`), rank 0 prepares a --corpus while
    the other ranks wait for it."""
    import sys
    from pathlib import Path

    from npllm.chat_data import CHAT_DEMO, prepare_chat
    from npllm.checkpoint import read_record
    from npllm.config import TrainConfig, preset_values, scaled_warmup, split_overrides
    from npllm.data import load_meta, prepare
    from npllm.distributed import World
    from npllm.errors import CheckpointError, ConfigError
    from npllm.gpt import GPTConfig
    from npllm.io import ensure_writable_dir
    from npllm.runs import check_run_dir, resume_configs

    world = World() if world is None else world
    preset = preset_values(args.preset)
    flags = {
        name: getattr(args, name) for name, _, _ in MODEL_FLAGS + TRAIN_FLAGS if hasattr(args, name)
    }
    model_flags, train_flags = split_overrides(flags)
    if args.resume and args.overwrite:
        raise ConfigError("pass either --resume or --overwrite, not both")
    if args.data and args.corpus:
        raise ConfigError("pass --data DIR or --corpus NAME|FILE, not both")
    if args.resume:
        if args.corpus:
            raise ConfigError("--resume trains on the run's own data; drop --corpus")
        if args.init_from:
            raise ConfigError("--resume continues the run's own weights; drop --init-from")
        model_values, train_values, data_dir = resume_configs(args.out)
        for k, v in model_flags.items():
            if model_values.get(k) != v:
                raise CheckpointError(
                    f"the run in {args.out} has {k}={model_values.get(k)!r} but "
                    f"--{k.replace('_', '-')} {v} was given: a resumed model keeps its shape; "
                    "drop the flag, or start a new run with --overwrite"
                )
        data_dir = args.data or data_dir
        train_values.update(train_flags)
    else:
        if args.data:
            data_dir = args.data
        else:
            if args.init_from:
                raise ConfigError(
                    "--init-from needs data tokenized with that run's tokenizer: prepare it "
                    f"with `npllm prepare --tokenizer-from {args.init_from}` and pass --data"
                )
            data_dir = str(Path(args.out) / "data")
            corpus = args.corpus or "shakespeare"
            bpe_vocab = model_flags.get("vocab_size") if args.tokenizer == "bpe" else None
            if world.is_main:
                check_run_dir(Path(args.out), resume=False, overwrite=args.overwrite)
                ensure_writable_dir(args.out, "--out")
                if corpus == CHAT_DEMO:
                    prepare_chat(corpus, data_dir, args.tokenizer, bpe_vocab)
                else:
                    prepare(corpus, data_dir, args.tokenizer, bpe_vocab)
            world.barrier()
        pm, pt = split_overrides(preset)
        data_vocab = int(load_meta(data_dir)["vocab_size"])
        if args.init_from:
            name = "best" if (Path(args.init_from) / "best.json").is_file() else "last"
            try:
                pm = dict(read_record(args.init_from, name)["model_config"])
            except (KeyError, TypeError):
                raise CheckpointError(
                    f"the checkpoint in {args.init_from} lacks its model config; it is corrupt"
                ) from None
            fixed = {k: v for k, v in model_flags.items() if k != "dropout" and pm.get(k) != v}
            if fixed:
                k = next(iter(fixed))
                raise ConfigError(
                    f"--{k.replace('_', '-')} cannot change with --init-from: the model keeps "
                    f"the shape of {args.init_from} ({k}={pm.get(k)!r}); drop the flag"
                )
            pm["vocab_size"] = max(int(pm["vocab_size"]), data_vocab)
        model_values = {**pm, **model_flags}
        model_values.setdefault("vocab_size", data_vocab)
        train_values = {**pt, **train_flags}
        if "warmup_iters" not in train_flags:
            warmup = scaled_warmup(train_values)
            if warmup is not None:
                if world.is_main:
                    print(
                        f"npllm train: note: warmup shortened from "
                        f"{train_values['warmup_iters']} to {warmup} steps, a tenth of this "
                        "run (--warmup-iters sets it)",
                        file=sys.stderr,
                    )
                train_values["warmup_iters"] = warmup
    try:
        return data_dir, GPTConfig(**model_values), TrainConfig(**train_values)
    except TypeError as e:
        raise ConfigError(f"incomplete model config ({e}); pass the missing flag") from None


def run(args: argparse.Namespace) -> int:
    import sys

    from npllm import distributed
    from npllm.train import TrainingDiverged, TrainingInterrupted, train

    world = distributed.init()  # this process alone unless mpiexec or srun started it
    # Diverging and Ctrl-C are decided on reduced values, so every rank stops there alike.
    with world.fail_together("train", agreed=(TrainingDiverged, TrainingInterrupted)):
        data_dir, model_config, config = resolve(args, world)
        if world.size > 1 and world.is_main:
            rows = {-(-config.batch_size // world.size), config.batch_size // world.size}
            print(
                f"npllm train: {world.describe()}; --batch-size {config.batch_size} is the "
                f"global batch ({' or '.join(map(str, sorted(rows)))} rows per rank)",
                file=sys.stderr,
            )
        result = train(
            data_dir,
            args.out,
            model_config,
            config,
            resume=args.resume,
            overwrite=args.overwrite,
            init_from=args.init_from,
            progress=False if args.quiet else None,
            echo=not args.quiet,
            world=world,
            zero1=args.zero1,
        )
    if world.is_main:
        print(
            f"trained {result.iter} iterations in {result.seconds:.1f} s: val loss "
            f"{result.val_loss:.4f} (best {result.best_val_loss:.4f}); run in {args.out}"
        )
    return 0

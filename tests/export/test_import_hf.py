"""`npllm import-hf` judged by transformers: a GPT2LMHeadModel with a byte-level BPE
tokenizer (trained here by Hugging Face `tokenizers`, which numbers its vocabulary in its
own order) saved by save_pretrained becomes a run whose model gives the transformers
model's logits and whose tokenizer gives its tokens; `npllm sample`, `npllm train
--init-from` and `npllm export` accept the run."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from npllm.cli import main
from npllm.export.tokenizer import token_string
from npllm.generate import generate
from npllm.runs import load_run
from tests.export.conftest import EXAMPLE, VARIED


def hf_bpe(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = VARIED * 3 + " ".join(f"word{i} thing{i % 7}" for i in range(300))
    tok.train_from_iterator([text], trainer)
    return tok


def save_hf(folder, vocab_size=400, padded=0, **config):
    """A random GPT2LMHeadModel and its tokenizer in `folder`; returns the model."""
    tok = hf_bpe(vocab_size)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    base = dict(n_positions=64, n_embd=32, n_layer=2, n_head=4)
    eos = tok.token_to_id("<|endoftext|>")
    base.update(bos_token_id=eos, eos_token_id=eos)
    cfg = GPT2Config(vocab_size=tok.get_vocab_size() + padded, **{**base, **config})
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # biases and LayerNorms away from their init, so each one counts
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model, tok


def hf_id_of(tok: Tokenizer, npllm_tok) -> np.ndarray:
    """The Hugging Face id of every npllm id."""
    out = []
    for i in range(npllm_tok.vocab_size):
        text = npllm_tok.vocab[i]
        s = text.decode() if i in npllm_tok.special_ids else token_string(text)
        out.append(tok.token_to_id(s))
    return np.array(out)


@pytest.mark.parametrize(
    "config",
    [{}, {"activation_function": "relu", "n_inner": 48, "tie_word_embeddings": False}],
    ids=["gelu-new-tied", "relu-untied"],
)
def test_imported_model_gives_the_transformers_logits(tmp_path, config):
    hf_model, tok = save_hf(tmp_path / "hf", padded=3, **config)
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    run = load_run(tmp_path / "run")
    # tokenization: the same tokens, under npllm's numbering
    hf_ids = hf_id_of(tok, run.tokenizer)
    ours = run.tokenizer.encode(EXAMPLE, allowed_special="all")
    assert hf_ids[ours].tolist() == tok.encode(EXAMPLE).ids
    assert run.tokenizer.decode(ours) == EXAMPLE
    assert sorted(hf_ids.tolist()) == list(range(tok.get_vocab_size()))
    assert run.config.vocab_size == tok.get_vocab_size() + 3
    # logits: npllm id i's logit is the transformers logit of token hf_ids[i]
    ids = np.array([ours[:64], ours[-64:]])
    with torch.no_grad():
        theirs = hf_model(torch.tensor(hf_ids[ids])).logits.numpy()
    mine = run.model(ids)[0].data[..., : len(hf_ids)]
    np.testing.assert_allclose(mine, theirs[..., hf_ids], atol=1e-4, rtol=0)
    # greedy continuations agree token for token
    prompt = ours[:10]
    new, _ = generate(run.model, prompt, 20, greedy=True)
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor(hf_ids[prompt][None]), max_new_tokens=20, do_sample=False, pad_token_id=0
        )
    assert hf_ids[new].tolist() == out[0, 10:].tolist()


def test_imported_run_samples_fine_tunes_and_exports(tmp_path, capsys):
    save_hf(tmp_path / "hf")
    run = tmp_path / "run"
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(run)]) == 0
    capsys.readouterr()
    args = ["sample", "--run", str(run), "--prompt", "Hello", "--greedy"]
    assert main([*args, "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("Hello")
    # fine-tune on chat data tokenized with the imported tokenizer (plus the chat tokens)
    conv = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello, world!"},
        ]
    }
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(conv) for _ in range(60)) + "\n")
    data = tmp_path / "data"
    prep = ["prepare", "--chat", "--corpus", str(tmp_path / "chat.jsonl"), "--out", str(data)]
    assert main([*prep, "--tokenizer-from", str(run)]) == 0
    tuned = tmp_path / "tuned"
    flags = ["--max-iters", "3", "--batch-size", "2", "--eval-iters", "1", "--quiet"]
    code = main(
        ["train", "--init-from", str(run), "--data", str(data), "--out", str(tuned), *flags]
    )
    assert code == 0
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "again")]) == 0
    assert main(["export", str(tuned), "--format", "hf", "--out", str(tmp_path / "tuned_hf")]) == 0
    capsys.readouterr()
    # an existing run is not replaced without --overwrite
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(run)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(run), "--overwrite"]) == 0


def test_import_refuses_what_it_cannot_read_in_one_line(tmp_path, capsys):
    folder = tmp_path / "hf"
    save_hf(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cases = {
        "pickle": lambda: (folder / "model.safetensors").rename(folder / "pytorch_model.bin"),
        "bert": lambda: (folder / "config.json").write_text(
            json.dumps({**cfg, "model_type": "bert"})
        ),
        "llama": lambda: (folder / "config.json").write_text(
            json.dumps({**cfg, "model_type": "llama"})
        ),
        "activation": lambda: (folder / "config.json").write_text(
            json.dumps({**cfg, "activation_function": "silu"})
        ),
    }
    expected = {
        "pickle": "save_pretrained",
        "bert": "'bert'",
        "llama": "lacks 'hidden_size'",
        "activation": "silu",
    }
    for name, damage in cases.items():
        save_hf(folder)
        (folder / "pytorch_model.bin").unlink(missing_ok=True)
        damage()
        capsys.readouterr()
        code = main(["import-hf", str(folder), "--out", str(tmp_path / f"run-{name}")])
        err = capsys.readouterr().err
        assert code == 2, name
        assert expected[name] in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_gpt2_small_shape_imports(tmp_path):
    """GPT-2 small's 124M shape (random weights, no download): imported, same logits."""
    t0 = time.perf_counter()
    shape = dict(n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    hf_model, tok = save_hf(tmp_path / "hf", vocab_size=400, padded=50257 - 400, **shape)
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    run = load_run(tmp_path / "run")
    assert run.model.num_params() > 120e6
    hf_ids = hf_id_of(tok, run.tokenizer)
    ids = np.array([run.tokenizer.encode(VARIED)[:32]])
    with torch.no_grad():
        theirs = hf_model(torch.tensor(hf_ids[ids])).logits.numpy()
    mine = run.model(ids)[0].data[..., : len(hf_ids)]
    np.testing.assert_allclose(mine, theirs[..., hf_ids], atol=1e-4, rtol=0)
    print(f"124M import test: {time.perf_counter() - t0:.1f} s")


@pytest.mark.parametrize("mistral", [False, True], ids=["llama", "mistral-window"])
def test_llama_family_imports_with_the_transformers_logits(tmp_path, mistral):
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    tok = hf_bpe(400)
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path / "hf")
    common = dict(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=not mistral,
    )
    torch.manual_seed(1)
    if mistral:
        hf_model = MistralForCausalLM(MistralConfig(sliding_window=7, **common))
    else:
        hf_model = LlamaForCausalLM(LlamaConfig(attention_bias=True, mlp_bias=True, **common))
    with torch.no_grad():
        for p in hf_model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    hf_model.eval().save_pretrained(tmp_path / "hf")
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    run = load_run(tmp_path / "run")
    assert run.config.pos_embedding == "rope" and run.config.n_kv_head == 2
    assert run.config.sliding_window == (7 if mistral else None)
    hf_ids = hf_id_of(tok, run.tokenizer)
    ours = run.tokenizer.encode(EXAMPLE, allowed_special="all")
    assert hf_ids[ours].tolist() == tok.encode(EXAMPLE).ids
    ids = np.array([ours[:64], ours[-64:]])
    with torch.no_grad():
        theirs = hf_model(torch.tensor(hf_ids[ids])).logits.numpy()
    np.testing.assert_allclose(run.model(ids)[0].data, theirs[..., hf_ids], atol=1e-4, rtol=0)
    # fine-tuning starts from these weights with the chat tokens added: the embedding and
    # an untied head each keep their rows and grow by fresh ones (npllm.runs.init_weights)
    from npllm.chat import CHAT_SPECIALS
    from npllm.gpt import GPT
    from npllm.runs import init_weights

    grown_tok = run.tokenizer.with_specials(CHAT_SPECIALS)
    V = run.config.vocab_size
    grown = GPT(dataclasses.replace(run.config, vocab_size=grown_tok.vocab_size), seed=5)
    init_weights(tmp_path / "run", grown, grown_tok)
    before, after = run.model.state_dict(), grown.state_dict()
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        np.testing.assert_array_equal(after[key][:V], before[key])
        assert after[key].shape[0] == grown_tok.vocab_size
    tied = after["lm_head.weight"] is after["model.embed_tokens.weight"]
    assert tied == (not mistral)
    if mistral:
        assert not np.array_equal(
            after["lm_head.weight"][V:], after["model.embed_tokens.weight"][V:]
        )

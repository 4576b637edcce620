"""The benchmark harness end to end at the "tiny" shape: every framework runs in a process
of its own (different pids, npllm's never imports torch and torch's never imports npllm),
results come back as JSON, the frameworks' losses and greedy ids are compared, and each
benchmark writes its section of a RESULTS.md. One round, one or two samples: these test
the machinery, not the speed."""

from __future__ import annotations

import os
import re

import pytest

from benchmarks import common

pytest.importorskip("torch")


@pytest.fixture
def record(monkeypatch):
    """Wrap a benchmark module's `alternate` so a test sees every worker's result."""
    seen: list[dict[str, list[dict]]] = []

    def wrap(module):
        real = module.alternate

        def recording(*args, **kwargs):
            out = real(*args, **kwargs)
            seen.append(out)
            return out

        monkeypatch.setattr(module, "alternate", recording)
        return seen

    return wrap


def pids(results: dict[str, list[dict]]) -> dict[str, int]:
    return {label: runs[0]["info"]["pid"] for label, runs in results.items()}


def assert_own_processes(results: dict[str, list[dict]]) -> None:
    ids = pids(results)
    assert len(set(ids.values())) == len(ids) and os.getpid() not in ids.values()
    for label, runs in results.items():
        for r in runs:
            loaded = r["info"]["loaded"]
            if label == "torch":
                assert loaded["torch"] and not loaded["npllm"], label
            elif label in ("npllm", "numba", "numpy"):
                assert loaded["npllm"] and not loaded["torch"], label


def test_train_step_compares_losses_across_processes(tmp_path, record):
    from benchmarks import train_step

    seen = record(train_step)
    out = tmp_path / "RESULTS.md"
    argv = ["--shape", "tiny", "--rounds", "1", "--steps", "2", "--warmup", "1"]
    assert train_step.main([*argv, "--results", str(out)]) == 0
    results = seen[-1]
    assert set(results) == {"npllm", "torch"}
    assert_own_processes(results)
    npl, tch = results["npllm"][0], results["torch"][0]
    assert len(npl["samples"]["step"]) == 2 and len(npl["losses"]) == 3
    assert train_step.loss_gap(tch["losses"], npl["losses"]) < 1e-5
    assert tch["info"]["torch_threads"] >= 1 and npl["info"]["numba_threads"] >= 1
    text = out.read_text()
    assert "## Training step" in text and "| npllm | " in text and "| torch | " in text
    assert "npllm/torch step time: **" in text and "Largest relative loss gap" in text
    assert re.search(r"Machine: .*, \d+ cores, ", text) and "Load average" in text


def test_llama_family_trains_beside_transformers_with_the_same_losses(tmp_path, record):
    from benchmarks import train_step

    seen = record(train_step)
    out = tmp_path / "RESULTS.md"
    argv = ["--shape", "tiny-llama", "--rounds", "1", "--steps", "2", "--warmup", "1"]
    assert train_step.main([*argv, "--results", str(out)]) == 0
    results = seen[-1]
    assert_own_processes(results)
    npl, tch = results["npllm"][0], results["torch"][0]
    assert npl["losses"][0] > 1.0  # a real loss, ~ln(11) at init
    assert train_step.loss_gap(tch["losses"], npl["losses"]) < 1e-5
    assert "## Training step" in out.read_text()


def test_a_loss_mismatch_is_reported_loudly():
    from benchmarks import train_step

    meta = {
        "config": {
            "batch_size": 2,
            "block_size": 8,
            "n_layer": 1,
            "n_head": 2,
            "n_embd": 16,
            "vocab_size": 11,
            "mlp_hidden": None,
            "activation": "gelu",
        },
        "n_params": 1000,
    }

    def run(losses):
        return {
            "samples": {"step": [0.001, 0.002]},
            "losses": losses,
            "info": {"peak_rss_mb": 100.0},
        }

    results = {"npllm": [run([2.4, 2.3])], "torch": [run([2.4, 2.5])]}
    text, worst = train_step.report("tiny", meta, results, 2, 0)
    assert worst > train_step.LOSS_TOLERANCE and "LOSS MISMATCH" in text


def test_kernels_through_the_cli(tmp_path):
    from npllm.cli import main

    out = tmp_path / "RESULTS.md"
    argv = ["--shape", "tiny", "--rounds", "1", "--reps", "1", "--only", "softmax", "--no-matmul"]
    assert main(["bench", "kernels", *argv, "--results", str(out)]) == 0
    text = out.read_text()
    assert "| softmax (target) |" in text and "| softmax | bwd |" in text
    found = dict(re.findall(r"^- (numba|numpy|torch) \(pids (\d+)\)", text, re.M))
    assert set(found) == {"numba", "numpy", "torch"} and len(set(found.values())) == 3
    assert "imported torch: no" in text and "imported npllm: no" in text


def test_kernel_cases_are_the_same_on_every_side():
    from benchmarks.kernels import SHAPES, build_cases
    from npllm import kernels as K

    with K.use(K.backend()):  # build_cases switches the backend, as a worker process does
        keys = {s: [c.key for c in build_cases(SHAPES["tiny"], s)] for s in ("numpy", "torch")}
    assert keys["numpy"] == keys["torch"] and "matmul lm_head|bwd" in keys["numpy"]
    assert {"softmax|fwd", "softmax|bwd", "attention|bwd"} <= set(keys["torch"])


def test_generate_compares_greedy_ids_across_processes(tmp_path, record):
    from benchmarks import generate

    seen = record(generate)
    out = tmp_path / "RESULTS.md"
    argv = ["--shape", "tiny", "--rounds", "1", "--samples", "1", "--no-recompute"]
    assert generate.main([*argv, "--results", str(out)]) == 0
    results = seen[-1]
    assert_own_processes(results)
    npl, tch = results["npllm"][0], results["torch"][0]
    assert npl["ids"][generate.NPLLM_KV] == tch["ids"][generate.TORCH_KV]
    assert len(tch["ids"][generate.TORCH_KV]) == 7  # block_size - 1
    text = out.read_text()
    assert "## Generation" in text and "npllm/PyTorch, KV cache, tokens/s: **" in text
    assert "(separate processes) identical: True" in text


def test_shakespeare_trainers_agree(tmp_path, record):
    from benchmarks import shakespeare_char

    seen = record(shakespeare_char)
    words = "thou art the king of all the land and we shall speak no more of it".split()
    text = " ".join(words[(i * 7) % len(words)] for i in range(1200))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    out = tmp_path / "RESULTS.md"
    argv = ["--data", str(corpus), "--iters", "2", "--eval-interval", "1", "--eval-iters", "1"]
    assert shakespeare_char.main([*argv, "--results", str(out)]) == 0
    results = seen[-1]
    assert_own_processes(results)
    npl, tch = results["npllm"][0]["evals"], results["torch"][0]["evals"]
    assert [e[0] for e in npl] == [e[0] for e in tch] == [0, 1, 2]
    for a, b in zip(npl, tch):
        assert a[2] == pytest.approx(b[2], rel=1e-4)  # val losses
    assert "## Shakespeare char" in out.read_text()


def test_import_order(tmp_path, record):
    from benchmarks import import_order

    seen = record(import_order)
    out = tmp_path / "RESULTS.md"
    argv = ["--rounds", "1", "--steps", "1", "--warmup", "1", "--train", "tiny"]
    argv += ["--decode", "tiny", "--torch-shape", "tiny", "--results", str(out)]
    assert import_order.main(argv) == 0
    part1, part2 = seen[-2], seen[-1]
    assert {"npllm first", "torch first", "numpy first"} <= set(part1)
    assert part1["npllm first"][0]["info"]["loaded"]["torch"] is False
    assert part1["torch first"][0]["info"]["loaded"]["torch"] is True
    assert part2["torch alone"][0]["info"]["loaded"]["npllm"] is False
    assert part2["torch after npllm"][0]["info"]["loaded"]["npllm"] is True
    text = out.read_text()
    assert "| tiny train step |" in text and "| tiny decode step |" in text
    assert "Part 2: torch's tiny training step" in text


@pytest.mark.slow
def test_cold_start_compiles_then_loads(tmp_path):
    from benchmarks.cold_start import cold_start_table

    rows, runs = cold_start_table(1, "tiny")
    cold, warm = runs["cold"][0]["samples"], runs["warm"][0]["samples"]
    assert cold["compiled_after_step"][0] > 0 and warm["compiled_after_step"][0] == 0
    assert cold["first_step_s"][0] > warm["first_step_s"][0]


def test_alternate_rotates_who_goes_first(monkeypatch):
    order = []

    def fake_spawn(script, job, timeout=None):
        order.append(job.label)
        return {"info": {"pid": len(order)}, "samples": {}}

    monkeypatch.setattr(common, "spawn", fake_spawn)
    jobs = [common.Job(x, "w", {}) for x in "ABC"]
    common.alternate(None, jobs, 3, echo=lambda _: None)
    assert order == list("ABCBCACAB")


def test_isolation_is_checked():
    info = {"framework": "torch", "loaded": {"torch": True, "npllm": True}}
    with pytest.raises(common.BenchError, match="torch process imported npllm"):
        common.check_isolation({"label": "torch", "info": info})
    info = {"framework": "numba", "loaded": {"torch": True, "npllm": True}}
    with pytest.raises(common.BenchError, match="imported torch"):
        common.check_isolation({"label": "numba", "info": info})


def test_stats_median_and_spread():
    s = common.Stats([[1.0, 2.0, 3.0], [4.0, 5.0]])
    assert s.median == 3.0 and s.run_medians == [2.0, 4.5]
    assert s.fmt() == "3.0 (runs 2.0-4.5; IQR 2.0-4.0)"
    assert common.ratio(s, s.map(lambda x: 2 * x)).startswith("0.50 (rounds 0.50-0.50)")


def test_write_section_replaces_only_its_own(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## Train\n\nkeep me\n\n## Kernels\n\nold\n\n## Other\n\nx\n")
    common.write_section("Kernels", "new table", path)
    common.write_section("Added", "appended", path)
    text = path.read_text()
    assert "old" not in text and "new table" in text and "keep me" in text
    assert text.index("## Train") < text.index("## Kernels") < text.index("## Other")
    assert text.rstrip().endswith("appended")


def test_cpu_isa_names_the_vector_extensions():
    assert re.fullmatch(
        r"(AVX2|AVX-512|AMX)( / (AVX2|AVX-512|AMX))*|no AVX2|unknown", common.cpu_isa()
    )


def test_header_warns_when_torch_ran_with_thread_variables():
    def info(framework, env):
        return {
            "pid": 1,
            "framework": framework,
            "python": "3",
            "env": env,
            "loaded": {"torch": framework == "torch", "npllm": framework != "torch"},
        }

    results = {
        "npllm": [{"info": info("npllm", {})}],
        "torch": [{"info": info("torch", {"OMP_WAIT_POLICY": "passive"})}],
    }
    text = common.header(results, (0.5, 0.7), "python benchmarks/x.py")
    assert "**Warning**: torch's processes ran with OMP_WAIT_POLICY=passive" in text
    assert "at start 0.50, at end 0.70" in text
    results["torch"][0]["info"]["env"] = {}
    assert "Warning" not in common.header(results, (0.5, 0.7), "x")

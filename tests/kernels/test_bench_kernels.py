"""The kernel benchmark runs end to end (tiny shape, one sample) through `npllm bench`,
and RESULTS.md sections are replaced without touching the others."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from npllm.cli import main

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the benchmarks package


def test_npllm_bench_kernels_prints_a_table(capsys):
    argv = ["--shape", "tiny", "--reps", "1", "--only", "softmax", "--no-matmul"]
    assert main(["bench", "kernels", *argv]) == 0
    out = capsys.readouterr().out
    assert "| softmax (target) |" in out and "| softmax | bwd |" in out


def test_matmul_table_reports_gflops():
    from benchmarks.kernels import SHAPES, matmul_table

    rows = matmul_table(SHAPES["tiny"], reps=3)
    assert len(rows) == 2 + 2 * 5 and all("GFLOP/s" in r for r in rows[2:])


def test_unknown_benchmark_is_a_one_line_error(capsys):
    assert main(["bench", "no-such-benchmark"]) == 2
    assert "kernels" in capsys.readouterr().err


def test_write_section_replaces_only_its_own(tmp_path):
    from benchmarks.common import write_section

    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## Train\n\nkeep me\n\n## Kernels\n\nold\n\n## Other\n\nx\n")
    write_section("Kernels", "new table", path)
    write_section("Added", "appended", path)
    text = path.read_text()
    assert "old" not in text and "new table" in text and "keep me" in text
    assert text.index("## Train") < text.index("## Kernels") < text.index("## Other")
    assert text.rstrip().endswith("appended")

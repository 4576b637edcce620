"""`npllm bench` finds the benchmark scripts and refuses unknown names with one line; the
harness itself is tested in tests/benchmarks/."""

from __future__ import annotations

from npllm.cli import main


def test_unknown_benchmark_is_a_one_line_error(capsys):
    assert main(["bench", "no-such-benchmark"]) == 2
    err = capsys.readouterr().err
    assert "kernels" in err and "train_step" in err and len(err.strip().splitlines()) == 1


def test_bench_help_lists_the_options(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_:
        main(["bench", "kernels", "--help"])
    assert exit_.value.code == 0
    assert "--rounds" in capsys.readouterr().out

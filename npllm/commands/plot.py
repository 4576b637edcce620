"""`npllm plot RUN`: the loss curves of a run as a PNG (needs matplotlib: the `plot` or
`viz` extra); the same as `npllm viz loss RUN`."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder of `npllm train`")
    p.add_argument("--out", metavar="PNG", help="where to write the plot (default RUN/loss.png)")


def run(args: argparse.Namespace) -> int:
    from npllm.viz import loss_curve

    print(f"wrote {loss_curve(args.run, args.out)}")
    return 0

"""Our compiled fused loss against Liger-Kernel's compiled fused linear JSD loss, timed interleaved in one process.

``loss_memory.py`` measures each variant in a fresh process, one after the other; on a machine shared with other
jobs the load can change between two variants, and its ratios with it. Here both losses (and the teacher-head
matmul that Liger's time includes) run in one process on the same inputs, alternately, ``--rounds`` times, and
the best pass of each is kept, so a change of load hits both alike. Memory is not measured here (see
``loss_memory.py``). Inputs and settings are those of ``loss_memory.py``'s head workload: student hidden states
(N, H), LM head (V, H), teacher hidden states (N, H_t) and head (V, H_t); our loss takes the teacher logits
(computed once, outside the timing), Liger's the teacher's hidden states and head. T = 2, mean over positions,
Liger's ``beta`` 0 / 1 / ``--beta`` for forward_kl / reverse_kl / generalized_jsd (the same loss: see the loss
column). Needs ``liger-kernel`` (``pip install --no-deps liger-kernel==0.8.5``).

Usage:
    python benchmarks/loss_liger_interleaved.py --divergences generalized_jsd forward_kl --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loss_memory import LIGER_BETA, _machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "loss_liger_interleaved.md"


def _measure(args: argparse.Namespace, divergence: str) -> dict[str, tuple[float, float, float]]:
    import torch
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    from lmdistill.losses.chunked import fused_linear_loss
    from lmdistill.losses.divergences import get_divergence

    torch.manual_seed(0)
    n, v, h = args.tokens, args.vocab, args.hidden
    h_t = args.teacher_hidden or h
    div = get_divergence(divergence, beta=args.beta)
    beta = LIGER_BETA[divergence]
    hidden = torch.randn(n, h).requires_grad_()
    weight = (torch.randn(v, h) * h**-0.5).requires_grad_()
    teacher_hidden, teacher_weight = torch.randn(n, h_t), torch.randn(v, h_t) * (3.0 * h_t**-0.5)
    with torch.no_grad():
        teacher_logits = teacher_hidden @ teacher_weight.t()
    mean_weights = torch.full((n,), 1.0 / n)
    labels = torch.zeros(n, dtype=torch.long)
    liger = LigerFusedLinearJSDLoss(
        weight_hard_loss=0.0,
        weight_soft_loss=1.0,
        beta=args.beta if beta is None else beta,
        temperature=2.0,
        compiled=True,
        chunk_size=args.liger_chunk,
    )

    def backward(loss) -> tuple[float, float]:
        loss.backward()
        norm = (hidden.grad.double().norm() ** 2 + weight.grad.double().norm() ** 2) ** 0.5
        return loss.item(), float(norm)

    def ours():
        loss, _, _ = fused_linear_loss(
            hidden, weight, teacher_logits, div, temperature=2.0, div_weights=mean_weights, compile=True
        )
        return backward(loss)

    def theirs():
        return backward(liger(hidden, weight, teacher_hidden, teacher_weight, labels))

    def teacher_head():
        with torch.no_grad():
            for chunk in torch.chunk(teacher_hidden, max(1, n // args.liger_chunk)):
                chunk @ teacher_weight.t()
        return float("nan"), float("nan")

    variants = {"fused+compile": ours, "liger+compile": theirs, "teacher-head": teacher_head}
    best: dict[str, list[float]] = {}
    for round_ in range(args.rounds + 1):  # round 0 compiles
        for name, fn in variants.items():
            hidden.grad = weight.grad = None
            start = time.perf_counter()
            value, norm = fn()
            elapsed = time.perf_counter() - start
            if round_ and elapsed < best.get(name, [float("inf")])[0]:
                best[name] = [elapsed, value, norm]
            print(f"{divergence} round {round_} {name}: {elapsed:.2f} s", flush=True)
    return {name: tuple(r) for name, r in best.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--tokens", type=int, default=2_048)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--teacher-hidden", type=int, default=0, help="teacher width H_t (0 = H)")
    parser.add_argument("--divergences", nargs="*", default=["generalized_jsd", "forward_kl"])
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--liger-chunk", type=int, default=1024, help="Liger's chunk_size (its default: 1024)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after the compiling one")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    command = "python benchmarks/loss_liger_interleaved.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Our compiled fused loss vs Liger-Kernel's compiled fused linear JSD loss, interleaved in one process",
        "",
        f"- machine: {_machine('cpu')}, {torch.get_num_threads()} threads",
        f"- command: `{command.strip()}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
        f"- V = {args.vocab:,}, N = {args.tokens:,}, H = {args.hidden}, H_t = {args.teacher_hidden or args.hidden}, "
        f"T = 2, mean over positions; Liger chunk_size = {args.liger_chunk}, ours automatic (compile); best of "
        f"{args.rounds} interleaved rounds after a compiling one. Liger's time includes its teacher-head matmul; "
        "net = Liger - teacher-head.",
        "",
        "| divergence | fused+compile (s) | liger+compile (s) | teacher-head (s) | Liger net (s) "
        "| fused+compile / Liger net | loss (ours, Liger) | grad norm (ours, Liger) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for divergence in args.divergences:
        r = _measure(args, divergence)
        ours, theirs, head = r["fused+compile"], r["liger+compile"], r["teacher-head"]
        net = theirs[0] - head[0]
        lines.append(
            f"| {divergence} | {ours[0]:.2f} | {theirs[0]:.2f} | {head[0]:.2f} | {net:.2f} | {ours[0] / net:.2f}x "
            f"| {ours[1]:.6f}, {theirs[1]:.6f} | {ours[2]:.6g}, {theirs[2]:.6g} |"
        )
        print(lines[-1], flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join([*lines, ""]), encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

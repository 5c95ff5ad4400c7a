"""Forward+backward time and peak extra memory of the plain, chunked and fused KD losses.

Every measurement runs in a fresh subprocess so that one variant's allocations cannot hide another's. A worker
builds its inputs in place (no transient copies), records its resident memory, resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``), runs forward+backward once, and reports ``peak RSS - RSS after the inputs`` as the
extra memory; on a GPU it reports ``max_memory_allocated`` above the inputs instead. Time is the best of
``--repeats`` further forward+backward passes. Gradients stay allocated as they would in training, so the
extra memory of every variant includes the gradient of its inputs.

Two workloads:
- ``logits``: inputs are the student's logits (N, V) (requires grad; used through a view, so that they reach the
  loss as a non-leaf tensor as the LM head's output does in training) and the teacher's logits (N, V); variants
  plain and chunked.
- ``head``: inputs are the student's final hidden states (N, H), its LM-head weight (V, H) and the teacher's
  logits; the student's logits are computed inside each variant (``hidden @ W.T``); variants plain, chunked
  and fused. This is what a training step pays.

Usage:
    python benchmarks/loss_memory.py                      # the full grid, writes benchmarks/results/loss_memory.md
    python benchmarks/loss_memory.py --vocab 16000 --tokens 512 --divergences forward_kl --output /tmp/x.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "loss_memory.md"
VARIANTS = {"logits": ("plain", "chunked"), "head": ("plain", "chunked", "fused")}


# ------------------------------------------------------------------------------------------------ worker side


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _worker(args: argparse.Namespace) -> dict:
    import torch

    from lmdistill.losses.chunked import fused_linear_loss
    from lmdistill.losses.divergences import divergence, get_divergence

    torch.manual_seed(0)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    n, v, h = args.tokens, args.vocab, args.hidden
    div = get_divergence(args.divergence)
    T = 2.0

    def normal(*shape, scale=1.0, grad=False):
        x = torch.empty(*shape, device=device).normal_().mul_(scale)  # in place: no transient copy
        return x.requires_grad_(grad)

    teacher = normal(n, v, scale=3.0)
    if args.workload == "logits":
        inputs = {"student": normal(n, v, scale=3.0, grad=True)}
    else:
        inputs = {"hidden": normal(n, h, grad=True), "weight": normal(v, h, scale=h**-0.5, grad=True)}
    mean_weights = torch.full((n,), 1.0 / n, device=device)  # "mean" over positions, as weights for fused

    def step() -> float:
        for x in inputs.values():
            x.grad = None
        if args.variant == "fused":
            loss, _, _ = fused_linear_loss(
                inputs["hidden"], inputs["weight"], teacher, div, temperature=T, div_weights=mean_weights
            )
        else:
            if args.workload == "logits":  # a non-leaf view, as the LM head's output is in training
                logits = inputs["student"].view(n, v)
            else:
                logits = inputs["hidden"] @ inputs["weight"].t()
            loss = divergence(div, logits, teacher, temperature=T, implementation=args.variant, chunk_size=None)
            del logits
        loss.backward()
        return loss.item()

    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        value = step()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
    else:
        base = _rss_bytes("VmRSS")
        _reset_peak_rss()
        value = step()
        extra = _rss_bytes("VmHWM") - base
    grad_norm = sum(float(x.grad.double().norm() ** 2) for x in inputs.values()) ** 0.5
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    input_bytes = sum(x.numel() * x.element_size() for x in [teacher, *inputs.values()])
    return {
        "loss": value,
        "grad_norm": grad_norm,
        "extra_bytes": extra,
        "input_bytes": input_bytes,
        "time_s": min(times),
    }


# ------------------------------------------------------------------------------------------------ driver side


def _run_one(args: argparse.Namespace, workload: str, divergence: str, vocab: int, tokens: int, variant: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        f"--workload={workload}",
        f"--divergence={divergence}",
        f"--vocab={vocab}",
        f"--tokens={tokens}",
        f"--variant={variant}",
        f"--hidden={args.hidden}",
        f"--repeats={args.repeats}",
        f"--device={args.device}",
        f"--threads={args.threads}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, Python {platform.python_version()}"
    if device.startswith("cuda"):
        desc += f", GPU {torch.cuda.get_device_name(0)}"
    return desc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="logits", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="plain", help=argparse.SUPPRESS)
    parser.add_argument("--divergence", default="forward_kl", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, nargs="*", default=[16_000, 50_257, 151_936], help="vocabulary sizes V")
    parser.add_argument("--tokens", type=int, nargs="*", default=[512, 2_048], help="positions N = B x T")
    parser.add_argument(
        "--divergences", nargs="*", default=["forward_kl", "reverse_kl", "generalized_jsd"], help="divergences"
    )
    parser.add_argument("--workloads", nargs="*", default=["logits", "head"], choices=sorted(VARIANTS))
    parser.add_argument("--hidden", type=int, default=256, help="student width H of the head workload")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per measurement (the best is kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown table to write")
    args = parser.parse_args(argv)

    if args.worker:
        args.vocab, args.tokens = args.vocab[0], args.tokens[0]
        print(json.dumps(_worker(args)))
        return 0

    command = "python benchmarks/loss_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def write(lines: list[str]) -> None:  # after every row, so an interrupted grid keeps what it measured
        text = "\n".join(
            [
                "# KD loss memory and time: plain vs chunked vs fused",
                "",
                f"- machine: {_machine(args.device)}",
                f"- command: `{command.strip()}`",
                f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
                f"- T = 2, mean over positions, float32; head workload H = {args.hidden}; chunk size automatic "
                "(about 32 MiB per (chunk, V) float32 temporary).",
                "- peak extra: peak resident memory during one forward+backward minus the memory after the inputs "
                "were built (each variant in a fresh process); it includes the gradients of the inputs.",
                "",
                *lines,
                "",
            ]
        )
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(args.output)

    header = (
        "| workload | divergence | V | N | variant | fwd+bwd (s) | time / plain | peak extra (MiB) | extra / plain "
        "| inputs (MiB) | loss | grad norm |"
    )
    lines = [header, "|" + "---|" * 12]
    print(header, flush=True)
    for workload in args.workloads:
        for divergence in args.divergences:
            for vocab in args.vocab:
                for tokens in args.tokens:
                    plain = None
                    for variant in VARIANTS[workload]:
                        r = _run_one(args, workload, divergence, vocab, tokens, variant)
                        key = f"| {workload} | {divergence} | {vocab:,} | {tokens:,} | {variant} "
                        if "error" in r:
                            row = f"{key}| error: {r['error']} |"
                        else:
                            plain = plain or r
                            mib = r["extra_bytes"] / 2**20
                            row = (
                                f"{key}| {r['time_s']:.3f} | {r['time_s'] / plain['time_s']:.2f}x | {mib:,.0f} "
                                f"| {r['extra_bytes'] / max(plain['extra_bytes'], 1):.0%} "
                                f"| {r['input_bytes'] / 2**20:,.0f} | {r['loss']:.6f} | {r['grad_norm']:.6g} |"
                            )
                        lines.append(row)
                        print(row, flush=True)
                        write(lines)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

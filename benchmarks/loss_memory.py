"""Forward+backward time and peak extra memory of the plain, chunked and fused KD losses, and of Liger-Kernel's.

Every measurement runs in a fresh subprocess so that one variant's allocations cannot hide another's. A worker
builds its inputs in place (no transient copies); a compiled variant runs ``--warmup`` forward+backward passes
(they compile; the first one's time is the "first step" column) and frees their gradients and hands freed heap
memory back to the kernel (``malloc_trim``). The worker then records its resident memory, resets the kernel's
peak-RSS mark (``/proc/self/clear_refs``), runs forward+backward once, and reports ``peak RSS - RSS after the
inputs`` as the extra memory; on a GPU it reports ``max_memory_allocated`` above the inputs instead. Time is the
best of ``--repeats`` further forward+backward passes (with ``--repeats 0``, that of the measured pass).
Gradients stay allocated as they would in training, so the extra memory of every variant includes the gradient
of its inputs.

Two workloads:
- ``logits``: inputs are the student's logits (N, V) (requires grad; used through a view, so that they reach the
  loss as a non-leaf tensor as the LM head's output does in training) and the teacher's logits (N, V); variants
  plain, chunked and chunked+compile.
- ``head``: inputs are the student's final hidden states (N, H), its LM-head weight (V, H) and the teacher's
  logits (N, V) = teacher hidden states (N, H_t) @ teacher head (V, H_t).T, computed once before the
  measurement; the student's logits are computed inside each variant (``hidden @ W.T``). This is what a training
  step pays. Variants: plain, chunked, fused, each "+compile" (``loss.compile``: the per-chunk math through
  ``torch.compile``; not plain), and Liger-Kernel's ``LigerFusedLinearJSDLoss`` ("liger", "liger+compile").

Liger's loss takes the teacher's hidden states and head, not its logits, and computes the teacher logits chunk by
chunk inside its loss: its time includes that matmul. The "teacher-head" variant times the same matmul alone
(no gradient, Liger's chunks), and the "net" column is Liger's time minus it; for our variants, whose input is
the teacher logits, net = time. The ratio columns divide by ``--reference``'s net time and peak extra.

Liger settings that compute our loss exactly (checked by the loss and gradient-norm columns, which agree):
``LigerFusedLinearJSDLoss(weight_hard_loss=0, weight_soft_loss=1, beta=b, temperature=T)`` with labels all
supervised is our divergence mean over positions, not multiplied by T^2: Liger's ``beta`` weighs the teacher
as ours does (``JSD = beta KL(p_t || m) + (1 - beta) KL(p_s || m)``, ``m = beta p_t + (1 - beta) p_s``;
``beta = 0`` is forward KL(p_t || p_s), ``beta = 1`` reverse KL), so forward_kl -> beta 0, reverse_kl -> beta 1,
generalized_jsd -> beta 0.5 (``--beta``); both divide both logits by T. Liger's chunk is ``--liger-chunk`` rows
(its default, 1024). Liger is optional (``pip install -e .[bench]``, pinned 0.8.5; installed with ``--no-deps``,
it needs only torch): without it its variants are skipped with a note. Its ``chunked_loss`` package is pure
PyTorch and imports without Triton (checked with 0.8.5 on a CPU-only machine), so no workaround is needed.

Usage:
    python benchmarks/loss_memory.py                      # the full grid, writes benchmarks/results/loss_memory.md
    python benchmarks/loss_memory.py --vocab 16000 --tokens 512 --divergences forward_kl --output /tmp/x.md
    python benchmarks/loss_memory.py --workloads head --vocab 151936 --tokens 2048 --hidden 512 \\
        --divergences generalized_jsd --threads 2 --reference liger+compile \\
        --output benchmarks/results/loss_memory_liger.md  # against Liger-Kernel
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "loss_memory.md"
LIGER = ("liger", "liger+compile", "teacher-head")
VARIANTS = {
    "logits": ("plain", "chunked", "chunked+compile"),
    "head": ("plain", "chunked", "chunked+compile", "fused", "fused+compile", *LIGER),
}
LIGER_BETA = {"forward_kl": 0.0, "reverse_kl": 1.0, "generalized_jsd": None}  # None: --beta
"""Liger's JSD beta that computes each of our divergences (the others have no Liger counterpart)."""


# ------------------------------------------------------------------------------------------------ worker side


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _trim_heap() -> None:
    """Hand freed heap memory back to the kernel, so that the RSS after a warm-up is what is still in use."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement keeps what the allocator caches
        pass


def _worker(args: argparse.Namespace) -> dict:
    import torch

    from lmdistill.losses.chunked import chunked_per_token, fused_linear_loss
    from lmdistill.losses.divergences import get_divergence

    torch.manual_seed(0)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    n, v, h = args.tokens, args.vocab, args.hidden
    h_t = args.teacher_hidden or h
    div = get_divergence(args.divergence, beta=args.beta)
    T = 2.0
    variant, compile = args.variant.removesuffix("+compile"), args.variant.endswith("+compile")
    liger_chunks = max(1, n // args.liger_chunk)  # as Liger splits: torch.chunk(x, N // chunk_size)

    def normal(*shape, scale=1.0, grad=False):
        x = torch.empty(*shape, device=device).normal_().mul_(scale)  # in place: no transient copy
        return x.requires_grad_(grad)

    teacher = {}
    if args.workload == "logits":
        teacher["logits"] = normal(n, v, scale=3.0)
        inputs = {"student": normal(n, v, scale=3.0, grad=True)}
    else:
        teacher = {"hidden": normal(n, h_t), "weight": normal(v, h_t, scale=3.0 * h_t**-0.5)}
        if variant not in ("liger", "teacher-head"):  # ours take the teacher's logits, Liger its hidden and head
            with torch.no_grad():
                teacher = {"logits": teacher["hidden"] @ teacher["weight"].t()}  # (N, V), std 3 as in "logits"
        inputs = {"hidden": normal(n, h, grad=variant != "teacher-head"), "weight": normal(v, h, scale=h**-0.5)}
        inputs["weight"].requires_grad_(variant != "teacher-head")
    mean_weights = torch.full((n,), 1.0 / n, device=device)  # "mean" over positions, as weights
    if variant == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        beta = LIGER_BETA[args.divergence]
        liger = LigerFusedLinearJSDLoss(
            weight_hard_loss=0.0,
            weight_soft_loss=1.0,
            beta=args.beta if beta is None else beta,
            temperature=T,
            compiled=compile,
            chunk_size=args.liger_chunk,
        )
        labels = torch.zeros(n, dtype=torch.long, device=device)  # every position supervised: mean over N

    def step() -> float:
        for x in inputs.values():
            x.grad = None
        if variant == "teacher-head":  # the teacher matmul inside Liger's loss, alone
            with torch.no_grad():
                for chunk in torch.chunk(teacher["hidden"], liger_chunks):
                    logits = chunk @ teacher["weight"].t()
                    del logits
            return float("nan")
        if variant == "liger":
            loss = liger(inputs["hidden"], inputs["weight"], teacher["hidden"], teacher["weight"], labels)
        elif variant == "fused":
            loss, _, _ = fused_linear_loss(
                inputs["hidden"],
                inputs["weight"],
                teacher["logits"],
                div,
                temperature=T,
                div_weights=mean_weights,
                chunk_size=args.chunk_size,
                compile=compile,
            )
        else:
            if args.workload == "logits":  # a non-leaf view, as the LM head's output is in training
                logits = inputs["student"].view(n, v)
            else:
                logits = inputs["hidden"] @ inputs["weight"].t()
            if variant == "plain":
                loss = (div.per_token(logits, teacher["logits"], T) * mean_weights).sum()
            else:
                loss = chunked_per_token(
                    div,
                    logits,
                    teacher["logits"],
                    T,
                    chunk_size=args.chunk_size,
                    div_weights=mean_weights,
                    reduce=True,
                    compile=compile,
                )
            del logits
        loss.backward()
        return loss.item()

    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    compiled = compile or args.variant == "liger+compile"
    first = [timed() for _ in range(args.warmup if compiled else 0)]  # eager variants have nothing to warm up
    for x in inputs.values():
        x.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        value = step()
        torch.cuda.synchronize()
        measured = time.perf_counter() - start
        extra = torch.cuda.max_memory_allocated() - base
    else:
        _trim_heap()
        base = _rss_bytes("VmRSS")
        _reset_peak_rss()
        start = time.perf_counter()
        value = step()
        measured = time.perf_counter() - start
        extra = _rss_bytes("VmHWM") - base
    grads = [x.grad for x in inputs.values() if x.grad is not None]
    grad_norm = sum(float(g.double().norm() ** 2) for g in grads) ** 0.5 if grads else float("nan")
    times = [timed() for _ in range(args.repeats)] or [measured]  # --repeats 0: the measured pass's time
    input_bytes = sum(x.numel() * x.element_size() for x in [*teacher.values(), *inputs.values()])
    return {
        "loss": value,
        "grad_norm": grad_norm,
        "extra_bytes": extra,
        "input_bytes": input_bytes,
        "time_s": min(times),
        "first_s": first[0] if first else measured,
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
        f"--teacher-hidden={args.teacher_hidden}",
        f"--beta={args.beta}",
        f"--liger-chunk={args.liger_chunk}",
        f"--warmup={args.warmup}",
        f"--repeats={args.repeats}",
        f"--device={args.device}",
        f"--threads={args.threads}",
    ]
    if args.chunk_size:
        cmd.append(f"--chunk-size={args.chunk_size}")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _skip_reason(variant: str, divergence: str) -> str | None:
    """Why a variant cannot run here (Liger not installed, or no Liger counterpart of the divergence)."""
    if variant not in LIGER:
        return None
    if importlib.util.find_spec("liger_kernel") is None:
        return "skipped: liger-kernel is not installed (pip install -e .[bench])"
    if divergence not in LIGER_BETA:
        return f"skipped: Liger's JSD loss has no {divergence}"
    return None


def _liger_version() -> str:
    try:
        from importlib.metadata import version

        return f"liger-kernel {version('liger-kernel')}"
    except Exception:  # not installed
        return "liger-kernel not installed"


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


def _group_rows(group: dict[str, dict], reference: str, key: str) -> list[str]:
    """Table rows of one group, with net times (Liger's minus the teacher-head row) and ratios to ``reference``."""
    head = group.get("teacher-head", {}).get("time_s")
    for variant, r in group.items():
        r["variant"] = variant
        if "time_s" in r:
            liger = variant.startswith("liger")
            r["net_s"] = (None if head is None else r["time_s"] - head) if liger else r["time_s"]
    ref = group.get(reference)
    ref = ref if ref is not None and "time_s" in ref else None
    return [_row(f"{key}| {variant} ", r, ref) for variant, r in group.items()]


def _row(key: str, r: dict, ref: dict | None) -> str:
    if "skip" in r:
        return f"{key}| {r['skip']} |"
    if "error" in r:
        return f"{key}| error: {r['error']} |"
    inputs = f"{r['input_bytes'] / 2**20:,.0f}"
    if r["variant"] == "teacher-head":
        return f"{key}| {r['time_s']:.3f} | - | - | {r['first_s']:.1f} | - | - | {inputs} | - | - |"
    net, ref_net = r["net_s"], None if ref is None else ref["net_s"]
    ratio_t = f"{net / ref_net:.2f}x" if net is not None and ref_net else "-"
    ratio_m = f"{r['extra_bytes'] / max(ref['extra_bytes'], 1):.0%}" if ref else "-"
    net_text = "n/a (no teacher-head row)" if net is None else f"{net:.3f}"
    return (
        f"{key}| {r['time_s']:.3f} | {net_text} | {ratio_t} | {r['first_s']:.1f} | {r['extra_bytes'] / 2**20:,.0f} "
        f"| {ratio_m} | {inputs} | {r['loss']:.6f} | {r['grad_norm']:.6g} |"
    )


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
    parser.add_argument("--beta", type=float, default=0.5, help="generalized_jsd's beta (ours and Liger's)")
    parser.add_argument("--workloads", nargs="*", default=["logits", "head"], choices=sorted(VARIANTS))
    parser.add_argument("--variants", nargs="*", default=None, help="variants to run (default: all of a workload)")
    parser.add_argument("--reference", default="plain", help="variant the ratio columns divide by")
    parser.add_argument("--hidden", type=int, default=256, help="student width H of the head workload")
    parser.add_argument("--teacher-hidden", type=int, default=0, help="teacher width H_t (0 = H)")
    parser.add_argument("--chunk-size", type=int, default=0, help="our chunk size in positions (0 = automatic)")
    parser.add_argument("--liger-chunk", type=int, default=1024, help="Liger's chunk_size (its default: 1024)")
    parser.add_argument("--warmup", type=int, default=1, help="compiled variants: passes before measuring (compile)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed passes after the measured one (the best is kept; 0 = that one)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown table to write")
    args = parser.parse_args(argv)
    args.chunk_size = args.chunk_size or None

    if args.worker:
        args.vocab, args.tokens = args.vocab[0], args.tokens[0]
        print(json.dumps(_worker(args)))
        return 0

    command = "python benchmarks/loss_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    h_t = args.teacher_hidden or args.hidden
    chunk = (
        f"{args.chunk_size} positions"
        if args.chunk_size
        else "automatic (about 32 MiB per (chunk, V) float32, 64 MiB for +compile: auto_chunk_size)"
    )
    notes = [
        f"- T = 2, mean over positions, float32, not multiplied by T^2; generalized_jsd beta = {args.beta}; "
        f"head workload H = {args.hidden}, teacher H_t = {h_t}; our chunk size {chunk}.",
        f"- fwd+bwd: best of {args.repeats} timed passes after the measured one"
        if args.repeats
        else "- fwd+bwd: the time of the measured pass (one pass: --repeats 0)",
        f"- first step: the first pass; compiled variants (+compile, liger+compile) run {args.warmup} untimed "
        "warm-up pass(es) first (compilation included in the first step), eager ones none.",
        "- peak extra: peak resident memory during one forward+backward (after the warm-up) minus the memory after "
        "the inputs were built (each variant in a fresh process); it includes the gradients of the inputs, not the "
        "inputs.",
    ]
    if any(v in LIGER for w in args.workloads for v in (args.variants or VARIANTS[w])):
        notes += [
            f"- {_liger_version()}: LigerFusedLinearJSDLoss(weight_hard_loss=0, weight_soft_loss=1, "
            f"beta=0 / 1 / {args.beta} for forward_kl / reverse_kl / generalized_jsd, temperature=2, "
            f"chunk_size={args.liger_chunk}); compiled=True for liger+compile. Its inputs are the teacher's hidden "
            f"states (N, {h_t}) and head ({h_t} x V): its fwd+bwd includes the teacher-head matmul, which "
            "teacher-head times alone (same chunks, no gradient); net = fwd+bwd - teacher-head for Liger, "
            "= fwd+bwd for ours, whose inputs include the (N, V) teacher logits instead (inputs column).",
        ]
    notes.append(f"- ratios: net time and peak extra divided by those of {args.reference} in the same row group.")

    def write(lines: list[str]) -> None:  # after every row, so an interrupted grid keeps what it measured
        text = "\n".join(
            [
                "# KD loss memory and time: plain vs chunked vs fused"
                + (" vs Liger-Kernel" if any("liger" in line for line in lines) else ""),
                "",
                f"- machine: {_machine(args.device)}",
                f"- command: `{command.strip()}`",
                f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
                *notes,
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
        "| workload | divergence | V | N | variant | fwd+bwd (s) | net (s) | net / ref | first step (s) "
        "| peak extra (MiB) | extra / ref | inputs (MiB) | loss | grad norm |"
    )
    table = [header, "|" + "---|" * 14]
    print(header, flush=True)
    for workload in args.workloads:
        variants = [v for v in VARIANTS[workload] if args.variants is None or v in args.variants]
        for divergence, vocab, tokens in itertools.product(args.divergences, args.vocab, args.tokens):
            group: dict[str, dict] = {}  # one row group: every variant at one (divergence, V, N)
            for variant in variants:
                reason = _skip_reason(variant, divergence)
                group[variant] = (
                    {"skip": reason} if reason else _run_one(args, workload, divergence, vocab, tokens, variant)
                )
                rows = _group_rows(group, args.reference, f"| {workload} | {divergence} | {vocab:,} | {tokens:,} ")
                print(rows[-1], flush=True)
                write([*table, *rows])
            table += rows
    write(table)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

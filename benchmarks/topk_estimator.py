"""Gradient error of the two top-k estimators ("tail_bucket", "uniform_tail") against the full-teacher gradient.

For a teacher known only through its top-k log-probabilities and tail mass at temperature T
(``lmdistill.losses.topk``), each estimator gives a gradient of D with respect to the student's logits; the exact
one is that of the dense D against the full teacher. Reported per (teacher, student, T, k, D):

    relative error = ||g_est - g_exact|| / ||g_exact||      (Frobenius norms over all N positions x V logits)

of ``d/ds sum_positions D(p_t^T, p_s^T)``, and the teacher's mean top-k mass at T (``1 - m``). Only the tail
differs: on the cached tokens both estimators' gradients are exact for forward KL.

Teachers (N positions x V logits):
- ``peaked``: synthetic Zipf-like logits ``-a log(rank) + N(0, 1)``, a ~ U[1.6, 2.4] per position, ranks a random
  permutation of 1..V (T = 1: ~98% of the mass in the top 64);
- ``flat``: the same with a ~ U[1.0, 1.4] (T = 1: ~68% in the top 64; T = 2: ~7%);
- ``file``: real teacher logits from ``--teacher-logits FILE.pt``, a saved float tensor (N, V) (or (..., V),
  flattened; ``--positions`` keeps the first N rows).

Students (the gradient is evaluated at):
- ``random``: a random-init student, i.i.d. N(0, 0.5^2) logits independent of the teacher (a random-init LM head
  with init std 0.02 on unit-RMS hidden states of width H gives logits of std 0.02 sqrt(H): 0.48 for SmolLM2-135M's
  H = 576); ``--random-std``;
- ``peaky``: a confidently wrong student, i.i.d. N(0, 3^2) logits independent of the teacher (``--peaky-std``);
- ``perturbed``: a partly trained student, the teacher's logits plus i.i.d. N(0, 1) noise (``--noise-std``).

Usage:
    python benchmarks/topk_estimator.py                       # synthetic teachers, writes results/topk_estimator.md
    python benchmarks/topk_estimator.py --teacher-logits smollm2_logits.pt --output /tmp/real.md
    python benchmarks/topk_estimator.py --vocab 8192 --positions 32 --ks 16 64 --output /tmp/x.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "topk_estimator.md"
ESTIMATORS = ("tail_bucket", "uniform_tail")
SYNTHETIC = {"peaked": (1.6, 2.4), "flat": (1.0, 1.4)}  # range of the Zipf exponent a per position
STUDENTS = ("random", "peaky", "perturbed")


def synthetic_teacher(kind: str, positions: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """(N, V) float32 logits ``-a log(rank) + N(0, 1)`` with a per-position exponent a (see the module docstring)."""
    low, high = SYNTHETIC[kind]
    a = torch.empty(positions, 1).uniform_(low, high, generator=generator)
    ranks = torch.argsort(torch.rand(positions, vocab, generator=generator), dim=-1).float() + 1.0
    return -a * ranks.log() + torch.randn(positions, vocab, generator=generator)


def student_logits(kind: str, teacher: torch.Tensor, args: argparse.Namespace, generator: torch.Generator):
    """(N, V) student logits at which the gradients are compared."""
    noise = torch.randn(teacher.shape, generator=generator)
    if kind == "random":
        return noise * args.random_std
    if kind == "peaky":
        return noise * args.peaky_std
    return teacher + noise * args.noise_std


def load_teacher(path: Path, positions: int | None) -> torch.Tensor:
    """Real teacher logits from a ``torch.save``d tensor (..., V), as (N, V) float32."""
    logits = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2 or not logits.is_floating_point():
        raise SystemExit(f"{path}: expected a saved float tensor (N, V) of logits, got {type(logits).__name__}")
    logits = logits.reshape(-1, logits.shape[-1]).float()
    return logits[:positions] if positions else logits


def gradient_errors(
    teacher: torch.Tensor, student: torch.Tensor, T: float, ks, divergences, dtype, device="cpu"
) -> list[dict]:
    """Relative gradient errors of each estimator, for each k and divergence, at one (teacher, student, T)."""
    from lmdistill.losses.divergences import get_divergence, tempered_log_softmax
    from lmdistill.losses.topk import sparse_per_token, topk_teacher

    teacher, student = teacher.to(device, dtype), student.to(device, dtype)
    rows = []
    for name in divergences:
        div = get_divergence(name)
        s = student.clone().requires_grad_()
        (exact,) = torch.autograd.grad(div.per_token(s, teacher, T).sum(), s)
        for k in ks:
            top = topk_teacher(teacher, k, T)
            mass = tempered_log_softmax(teacher, T).gather(-1, top.ids).logsumexp(-1).exp().mean().item()
            errors = {}
            for estimator in ESTIMATORS:
                s = student.clone().requires_grad_()
                (grad,) = torch.autograd.grad(sparse_per_token(div, s, top, estimator).sum(), s)
                errors[estimator] = ((grad - exact).norm() / exact.norm()).item()
            rows.append({"divergence": name, "k": k, "mass": mass, **errors})
    return rows


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-logits", type=Path, help="saved float tensor (N, V) of real teacher logits")
    parser.add_argument("--no-synthetic", action="store_true", help="skip the synthetic peaked and flat teachers")
    parser.add_argument("--vocab", type=int, default=49_152, help="V of the synthetic teachers (SmolLM2's)")
    parser.add_argument("--positions", type=int, default=128, help="positions N (synthetic; first N rows of a file)")
    parser.add_argument("--ks", type=int, nargs="*", default=[16, 64, 256], help="top-k sizes")
    parser.add_argument("--temperatures", type=float, nargs="*", default=[1.0, 2.0], help="temperatures T")
    parser.add_argument("--divergences", nargs="*", default=["forward_kl", "reverse_kl"], help="divergences D")
    parser.add_argument("--students", nargs="*", default=list(STUDENTS), choices=STUDENTS)
    parser.add_argument(
        "--student-logits",
        type=Path,
        help="saved (N, V) logits of a real student on the same positions as --teacher-logits: one more student, "
        "'trained', measured against the file's teacher only",
    )
    parser.add_argument("--random-std", type=float, default=0.5, help="std of the random student's logits")
    parser.add_argument("--peaky-std", type=float, default=3.0, help="std of the peaky student's logits")
    parser.add_argument("--noise-std", type=float, default=1.0, help="std of the perturbed student's logit noise")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="compute dtype")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown table to write")
    args = parser.parse_args(argv)

    teachers: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(args.seed)
    if not args.no_synthetic:
        for kind in SYNTHETIC:
            teachers[kind] = synthetic_teacher(kind, args.positions, args.vocab, generator)
    if args.teacher_logits is not None:
        teachers[f"file {args.teacher_logits.name}"] = load_teacher(args.teacher_logits, args.positions)
    if not teachers:
        parser.error("nothing to measure: --no-synthetic needs --teacher-logits")
    dtype = getattr(torch, args.dtype)
    command = "python benchmarks/topk_estimator.py " + " ".join(argv if argv is not None else sys.argv[1:])

    header = "| teacher | student | T | k | top-k mass | D | tail_bucket | uniform_tail | better |"
    lines = [header, "|" + "---|" * 9]
    print(header, flush=True)
    start = time.perf_counter()
    real_student = load_teacher(args.student_logits, args.positions) if args.student_logits else None
    for teacher_name, teacher in teachers.items():
        kinds = list(args.students)
        if real_student is not None and teacher_name.startswith("file ") and real_student.shape == teacher.shape:
            kinds.append("trained")
        for student_kind in kinds:
            if student_kind == "trained":
                student = real_student
            else:
                student = student_logits(student_kind, teacher, args, generator)
            for T in args.temperatures:
                for r in gradient_errors(teacher, student, T, args.ks, args.divergences, dtype, args.device):
                    low, high = sorted(r[e] for e in ESTIMATORS)
                    better = "tie" if high - low <= 0.05 * high else min(ESTIMATORS, key=lambda e: r[e])
                    row = (
                        f"| {teacher_name} | {student_kind} | {T:g} | {r['k']} | {r['mass']:.1%} | {r['divergence']} "
                        f"| {r['tail_bucket']:.1%} | {r['uniform_tail']:.1%} | {better} |"
                    )
                    lines.append(row)
                    print(row, flush=True)
    elapsed = time.perf_counter() - start
    shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in teachers.items())
    text = "\n".join(
        [
            "# Top-k teacher: gradient error of the tail_bucket and uniform_tail estimators",
            "",
            f"- machine: {_machine()}",
            f"- command: `{command.strip()}`",
            f"- date: {time.strftime('%Y-%m-%d %H:%M')}; {elapsed:.0f} s",
            f"- teachers (N, V): {shapes}; {args.dtype} on {args.device}; seed {args.seed}.",
            *(
                []
                if args.no_synthetic
                else [
                    "- peaked / flat: synthetic Zipf-like logits `-a log(rank) + N(0, 1)`, a ~ U[1.6, 2.4] / "
                    "U[1.0, 1.4] per position, ranks a random permutation of the vocabulary."
                ]
            ),
            f"- students: random = a random-init student, i.i.d. N(0, {args.random_std:g}^2) logits; peaky = a "
            f"confidently wrong one, i.i.d. N(0, {args.peaky_std:g}^2) logits; perturbed = a partly trained one, the "
            f"teacher's logits + i.i.d. N(0, {args.noise_std:g}^2) noise. Random and peaky are independent of the "
            "teacher."
            + (f" trained = the saved logits of {args.student_logits.name}." if real_student is not None else ""),
            "- error: ||g_est - g_exact|| / ||g_exact||, the gradient of sum over positions of D(p_t^T, p_s^T) with "
            "respect to the student's logits, Frobenius norms over all N x V; exact = the dense D against the full "
            "teacher. top-k mass: the teacher's mean probability mass at T inside its top k. better: tie when the "
            "two errors are within 5% of each other.",
            "",
            *lines,
            "",
        ]
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

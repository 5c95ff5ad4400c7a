"""Distillation with online teachers vs a top-k teacher cache: the CPU Baby Llama recipe's student phase, one run.

Both students are the recipe's student, from the same initialisation, trained with the recipe's schedule and
objective on the same blocks in the same order, one after the other on this machine:

- online: both teachers run at every step (``TeacherEnsemble``), the divergence over the full vocabulary;
- cached: the ensemble's top-k per block is built once (``lmdistill.teachers.cache``; its build time is counted),
  then the student reads it (``lmdistill.losses.topk``).

The teachers are the recipe's, trained in ``--work-dir`` (or reused from a finished run with ``--teachers-from``).
The table gives wall time per epoch, tokens per second, the cache build time, bytes per token on disk, the mean
``KL(full teacher || top-k reconstruction)`` over sampled blocks (tail mass spread evenly over the other tokens),
the final dev loss and BLiMP of both students. It is written to ``benchmarks/results/distill_speed.md`` after each
phase.

    python benchmarks/distill_speed.py [--teachers-from runs/babyllama-cpu] [--top-k 64] [--blimp-limit 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from lmdistill.atomic import write_text
from lmdistill.config import load_recipe
from lmdistill.evaluation.runner import evaluate_tasks
from lmdistill.losses import DistillationObjective
from lmdistill.losses.topk import reconstruction_kl
from lmdistill.models import build_model
from lmdistill.pipeline import open_teacher_cache, prepare_run, train_teachers
from lmdistill.teachers import TeacherEnsemble
from lmdistill.training import train

RESULTS = Path(__file__).parent / "results" / "distill_speed.md"


def _student(recipe, tokenizer):
    torch.manual_seed(recipe.seed)
    return build_model(
        recipe.student.model,
        vocab_size=len(tokenizer),
        block_size=recipe.data.block_size,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
    )


def _train_timed(recipe, data, teacher, out_dir: Path) -> dict:
    """Train the student; wall time of each epoch from step timestamps (an epoch ends after its dev loss)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cfg = recipe.student.train
    steps_per_epoch = [data.train.num_batches(e, cfg.batch_size) for e in range(cfg.epochs)]
    stamps = {0: time.perf_counter()}
    objective = DistillationObjective.from_config(recipe.distillation, recipe.loss)
    result = train(
        _student(recipe, data.tokenizer),
        data.train,
        data.dev,
        cfg,
        out_dir,
        objective=objective,
        teacher=teacher,
        tokenizer=data.tokenizer,
        desc=out_dir.name,
        on_step=lambda step: stamps.__setitem__(step, time.perf_counter()),
    )
    end = time.perf_counter()
    bounds = np.cumsum([0, *steps_per_epoch])[:-1]
    # epoch e: from the end of epoch e - 1's last step (or the call) to the end of its own last step; the dev loss
    # of epoch e - 1 falls in it, and the last epoch also holds its dev loss and the final save
    edges = [stamps[int(b)] for b in bounds] + [end]
    epoch_times = np.diff(edges).tolist()
    tokens = sum(steps_per_epoch) * cfg.batch_size * data.train.block_size
    return {
        "final_dir": result.final_dir,
        "epoch_times": epoch_times,
        "train_s": sum(epoch_times),
        "tokens_per_s": tokens / sum(epoch_times),
        "dev_loss": result.dev_losses[-1],
    }


def _blimp(final_dir: Path, tokenizer, root: Path, limit: int) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(final_dir).eval()
    return evaluate_tasks(model, tokenizer, ["blimp"], data_root=root, limit=limit, progress="BLiMP")["blimp"]["acc"]


@torch.no_grad()
def _reconstruction_kl(ensemble, cache, blocks, temperature: float, sample: int) -> float:
    rng = np.random.default_rng(0)
    index = np.sort(rng.choice(len(blocks), size=min(sample, len(blocks)), replace=False))
    total, count = 0.0, 0
    for part in np.array_split(index, max(1, len(index) // 16)):
        logits = ensemble(blocks.batch(part * blocks.block_size), temperature=temperature)
        kl = reconstruction_kl(logits, cache.lookup(part))
        total += kl.sum().item()
        count += kl.numel()
    return total / count


def _table(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Distillation speed: online teachers vs a top-k teacher cache",
        "",
        f"`python benchmarks/distill_speed.py {meta['args']}` on {meta['machine']}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Recipe `{meta['recipe']}`: {meta['tokens']:,} training tokens "
        f"({meta['blocks']:,} blocks of {meta['block_size']}), {meta['epochs']} epochs, batch {meta['batch']}, "
        f"V = {meta['vocab']:,}; teachers {meta['teachers']}; student {meta['student_params']:,} parameters. "
        f"BLiMP: {meta['blimp_pairs']}.",
        "",
        "| variant | wall / epoch (s) | distillation total (s) | tokens / s | cache build (s) | total incl. build (s) "
        "| speed-up | bytes / token | mean KL(full ‖ top-k recon.) | dev loss | BLiMP (%) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    online_total = next((r["total_s"] for r in rows if r["variant"] == "online"), None)
    for r in rows:
        speedup = f"{online_total / r['total_s']:.2f}x" if online_total else "-"
        lines.append(
            f"| {r['variant']} | {' / '.join(f'{t:.1f}' for t in r['epoch_times'])} | {r['train_s']:.1f} "
            f"| {r['tokens_per_s']:,.0f} | {_fmt(r.get('build_s'), '.1f')} | {r['total_s']:.1f} | {speedup} "
            f"| {_fmt(r.get('bytes_per_token'), '.1f')} | {_fmt(r.get('recon_kl'), '.4f')} | {r['dev_loss']:.4f} "
            f"| {_fmt(None if r.get('blimp') is None else 100 * r['blimp'], '.1f')} |"
        )
    lines += [
        "",
        "Speed-up = online total / this variant's total, the cache build included. Wall time per epoch includes "
        "the epoch's dev loss. The KL is over "
        f"{meta['kl_blocks']} sampled blocks at the distillation temperature, in nats per token.",
        "",
    ]
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="babyllama-cpu")
    parser.add_argument("overrides", nargs="*", help="KEY.PATH=VALUE recipe overrides")
    parser.add_argument("--work-dir", default="runs/distill-speed", help="run folder for teachers, cache, students")
    parser.add_argument("--teachers-from", help="reuse the trained teachers of this finished run folder")
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--blimp-limit", type=int, default=100, help="pairs per BLiMP paradigm")
    parser.add_argument("--kl-blocks", type=int, default=128, help="blocks sampled for the reconstruction KL")
    parser.add_argument("--data-root")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    overrides = [*args.overrides, f"teachers.cache_top_k={args.top_k}", "evaluation.tasks=[blimp]"]
    if args.teachers_from:
        base = load_recipe(args.recipe)
        for i, t in enumerate(base.teachers.members):
            final = Path(args.teachers_from) / "models" / t.name / "final"
            overrides += [f"teachers.members.{i}.model.path={final}", f"teachers.members.{i}.train=null"]
    recipe = load_recipe(args.recipe, overrides)
    work = Path(args.work_dir)
    root, data = prepare_run(recipe, work, args.data_root, True, None)
    teachers = train_teachers(recipe, work, data, True, {})
    ensemble = TeacherEnsemble(list(teachers.values()), rule=recipe.distillation.ensemble)
    cfg = recipe.student.train
    meta = {
        "args": " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v and k != "overrides"),
        "machine": f"{platform.machine()} {torch.get_num_threads()}-thread CPU ({platform.platform()})",
        "recipe": recipe.name,
        "tokens": int(len(data.train.tokens)),
        "blocks": len(data.train),
        "block_size": data.train.block_size,
        "epochs": cfg.epochs,
        "batch": cfg.batch_size,
        "vocab": len(data.tokenizer),
        "teachers": ", ".join(f"{n} {sum(p.numel() for p in m.parameters()):,}" for n, m in teachers.items()),
        "student_params": sum(p.numel() for p in _student(recipe, data.tokenizer).parameters()),
        "blimp_pairs": f"{args.blimp_limit} pairs per paradigm, 67 paradigms",
        "kl_blocks": args.kl_blocks,
    }
    rows: list[dict] = []

    def publish() -> None:
        write_text(args.output, _table(rows, meta))
        print(_table(rows, meta))

    online = _train_timed(recipe, data, ensemble, work / "student-online")
    rows.append({"variant": "online", **online, "total_s": online["train_s"]})
    publish()

    cache_dir = work / "teacher-cache"
    if cache_dir.exists():
        shutil.rmtree(cache_dir)  # the build is part of what is timed
    start = time.perf_counter()
    cache = open_teacher_cache(recipe, work, data, teachers, ensemble)
    build_s = time.perf_counter() - start  # includes opening (checksums), as a run pays it
    cached = _train_timed(recipe, data, cache, work / "student-cached")
    recon = _reconstruction_kl(ensemble, cache, data.train, recipe.distillation.temperature, args.kl_blocks)
    rows.append(
        {
            "variant": f"cached (top-{args.top_k}, {recipe.teachers.cache_dtype})",
            **cached,
            "build_s": build_s,
            "total_s": cached["train_s"] + build_s,
            "bytes_per_token": cache.manifest["bytes_per_token"],
            "recon_kl": recon,
        }
    )
    publish()

    for row, run in zip(rows, (online, cached), strict=True):
        row["blimp"] = _blimp(run["final_dir"], data.tokenizer, root, args.blimp_limit)
        publish()
    (work / "distill_speed.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k != "final_dir"} for r in rows], indent=2)
    )


if __name__ == "__main__":
    main()

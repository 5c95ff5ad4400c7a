"""Distillation with online teachers vs a top-k teacher cache: the CPU Baby Llama recipe's student phase, one run.

Both students are the recipe's student, from the same initialisation, trained with the recipe's schedule and
objective on the same blocks in the same order, one after the other on this machine:

- online: both teachers run at every step (``TeacherEnsemble``), the divergence over the full vocabulary;
- cached: the ensemble's top-k per block is built once (``lmdistill.teachers.cache``; its build time is counted),
  then the student reads it (``lmdistill.losses.topk``).

The teachers are the recipe's, trained in ``--work-dir`` (or reused from a finished run with ``--teachers-from``).
The speed table (the recipe's seed) gives wall time per epoch, tokens per second, the cache build time, bytes per
token on disk and the mean ``KL(full teacher || top-k reconstruction)`` over sampled blocks (tail mass spread
evenly over the other tokens). The quality table repeats both students (and, with ``--baseline``, the student
trained without distillation) over ``--seeds`` seeds (initialisation and block order) with the final dev loss and
BLiMP (all 67,000 pairs unless ``--blimp-limit``): one seed cannot tell a 1-point BLiMP difference from seed noise.
Everything is written to ``benchmarks/results/distill_speed.md`` after each phase.

    python benchmarks/distill_speed.py [--teachers-from runs/babyllama-cpu] [--top-k 64] [--seeds 3] [--baseline]
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
from lmdistill.data.blocks import BlockDataset
from lmdistill.evaluation.runner import evaluate_tasks
from lmdistill.losses import DistillationObjective
from lmdistill.losses.topk import reconstruction_kl
from lmdistill.methods.babyllama import open_teacher_cache, prepare, train_teachers
from lmdistill.models import build_model
from lmdistill.teachers import TeacherEnsemble
from lmdistill.training import train

RESULTS = Path(__file__).parent / "results" / "distill_speed.md"


def _student(recipe, tokenizer, seed: int):
    torch.manual_seed(seed)
    return build_model(
        recipe.student.model,
        vocab_size=len(tokenizer),
        block_size=recipe.data.block_size,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
    )


def _train_timed(recipe, data, teacher, out_dir: Path, seed: int) -> dict:
    """Train the student (``seed``: initialisation and block order; no teacher: the baseline), timing each epoch."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cfg = recipe.student.train
    blocks = BlockDataset(data.train.tokens, data.train.block_size, seed=seed, random_offset=False)
    steps_per_epoch = [blocks.num_batches(e, cfg.batch_size) for e in range(cfg.epochs)]
    if teacher is None:
        objective = DistillationObjective.language_modeling(recipe.loss.implementation)
    else:
        objective = DistillationObjective.from_config(recipe.distillation, recipe.loss)
    stamps = {0: time.perf_counter()}
    result = train(
        _student(recipe, data.tokenizer, seed),
        blocks,
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
    # epoch e: from the end of epoch e - 1's last step (or the call) to the end of its own last step; the dev loss
    # of epoch e - 1 falls in it, and the last epoch also holds its own dev loss and the final save
    bounds = np.cumsum([0, *steps_per_epoch])[:-1]
    epoch_times = np.diff([stamps[int(b)] for b in bounds] + [end]).tolist()
    tokens = sum(steps_per_epoch) * cfg.batch_size * blocks.block_size
    return {
        "final_dir": result.final_dir,
        "epoch_times": epoch_times,
        "train_s": sum(epoch_times),
        "tokens_per_s": tokens / sum(epoch_times),
        "dev_loss": result.dev_losses[-1],
    }


def _blimp(final_dir: Path, tokenizer, root: Path, limit: int | None) -> float:
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


def _topk_mass(cache) -> float:
    """Mean share of the probability mass the cached top-k hold (1 - tail mass), over every cached position."""
    total, count = 0.0, 0
    for shard in range(cache.spec.num_shards):
        part = cache.lookup(np.asarray(cache.spec.shard_range(shard)))
        total += (1 - part.log_tail.exp()).sum().item()
        count += part.log_tail.numel()
    return total / count


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _mean_std(values: list[float], digits: int, sign: bool = False) -> str:
    if not values:
        return "-"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{float(np.mean(values)):{'+' if sign else ''}.{digits}f} ± {std:.{digits}f}"


def _blimp_gap(runs: dict) -> float | None:
    """Cached minus online BLiMP, in points."""
    online, cached = runs.get("online", {}).get("blimp"), runs.get("cached", {}).get("blimp")
    return None if online is None or cached is None else 100 * (cached - online)


def _speed_table(rows: list[dict], meta: dict) -> list[str]:
    lines = [
        f"## Speed (seed {meta['seed']})",
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
        f"the epoch's dev loss. The KL is over {meta['kl_blocks']} sampled blocks at the distillation temperature, "
        "in nats per token."
        + (
            f" The cached top-k hold {meta['topk_mass']:.1%} of the teachers' probability mass on average at this "
            "temperature; the rest is the tail."
            if "topk_mass" in meta
            else ""
        ),
        "",
    ]
    return lines


def _quality_table(quality: list[dict], build_s: float) -> list[str]:
    variants = list(quality[0]["runs"])
    lines = [
        f"## Quality and time over seeds ({len(quality)})",
        "",
        "| seed | "
        + " | ".join(f"{v} dev loss | {v} BLiMP (%) | {v} time (s)" for v in variants)
        + " | cached - online BLiMP | speed-up incl. build |",
        "|---|" + "---|---|---|" * len(variants) + "---|---|",
    ]
    for q in quality:
        cells = []
        for v in variants:
            run = q["runs"][v]
            blimp = _fmt(None if run.get("blimp") is None else 100 * run["blimp"], ".1f")
            cells.append(f"{run['dev_loss']:.4f} | {blimp} | {run['train_s']:.0f}")
        lines.append(
            f"| {q['seed']} | {' | '.join(cells)} | {_fmt(_blimp_gap(q['runs']), '+.1f')} "
            f"| {_speedup(q['runs'], build_s):.2f}x |"
        )
    if len(quality) > 1:
        cells = []
        for v in variants:
            dev = [q["runs"][v]["dev_loss"] for q in quality]
            blimp = [100 * q["runs"][v]["blimp"] for q in quality if q["runs"][v].get("blimp") is not None]
            time_s = [q["runs"][v]["train_s"] for q in quality]
            cells.append(f"{_mean_std(dev, 4)} | {_mean_std(blimp, 1)} | {_mean_std(time_s, 0)}")
        gaps = [g for q in quality if (g := _blimp_gap(q["runs"])) is not None]
        speedups = [_speedup(q["runs"], build_s) for q in quality]
        lines.append(
            f"| mean ± std | {' | '.join(cells)} | {_mean_std(gaps, 1, sign=True)} | {_mean_std(speedups, 2)}x |"
        )
    lines += [
        "",
        "Time = the student's distillation wall time; each seed's speed-up divides the online time by the cached "
        f"time plus the one cache build ({build_s:.1f} s). The runs of a seed follow each other, so machine noise "
        "spreads over the seeds rather than favouring one variant.",
        "",
    ]
    return lines


def _speedup(runs: dict, build_s: float) -> float:
    return runs["online"]["train_s"] / (runs["cached"]["train_s"] + build_s)


def _report(rows: list[dict], meta: dict, quality: list[dict]) -> str:
    lines = [
        "# Distillation speed: online teachers vs a top-k teacher cache",
        "",
        f"`python benchmarks/distill_speed.py {meta['args']}` on {meta['machine']}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Recipe `{meta['recipe']}`: {meta['tokens']:,} training tokens "
        f"({meta['blocks']:,} blocks of {meta['block_size']}), {meta['epochs']} epochs, batch {meta['batch']}, "
        f"V = {meta['vocab']:,}; teachers {meta['teachers']}; student {meta['student_params']:,} parameters. "
        f"BLiMP: {meta['blimp_pairs']}.",
        "",
        *_speed_table(rows, meta),
    ]
    if quality:
        lines += _quality_table(quality, meta["build_s"])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="babyllama-cpu")
    parser.add_argument("overrides", nargs="*", help="KEY.PATH=VALUE recipe overrides")
    parser.add_argument("--work-dir", default="runs/distill-speed", help="run folder for teachers, cache, students")
    parser.add_argument("--teachers-from", help="reuse the trained teachers of this finished run folder")
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3, help="students per variant, seeds recipe.seed + i")
    parser.add_argument("--baseline", action="store_true", help="also train the student without distillation")
    parser.add_argument("--blimp-limit", type=int, help="pairs per BLiMP paradigm (default: all 1,000)")
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
    root, data = prepare(recipe, work, args.data_root, True, None)
    teachers = train_teachers(recipe, work, data, True, {})
    ensemble = TeacherEnsemble(list(teachers.values()), rule=recipe.distillation.ensemble)
    cfg = recipe.student.train
    meta = {
        "args": " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
            for k, v in vars(args).items()
            if v and k not in ("overrides", "output")
        ),
        "machine": f"{platform.machine()} {torch.get_num_threads()}-thread CPU ({platform.platform()})",
        "recipe": recipe.name,
        "seed": recipe.seed,
        "tokens": int(len(data.train.tokens)),
        "blocks": len(data.train),
        "block_size": data.train.block_size,
        "epochs": cfg.epochs,
        "batch": cfg.batch_size,
        "vocab": len(data.tokenizer),
        "teachers": ", ".join(f"{n} {sum(p.numel() for p in m.parameters()):,}" for n, m in teachers.items()),
        "student_params": sum(p.numel() for p in _student(recipe, data.tokenizer, recipe.seed).parameters()),
        "blimp_pairs": f"{args.blimp_limit or 'all 1,000'} pairs per paradigm, 67 paradigms",
        "kl_blocks": args.kl_blocks,
    }
    rows: list[dict] = []
    quality: list[dict] = []

    def publish() -> None:
        text = _report(rows, meta, quality)
        write_text(args.output, text)
        print(text)
        records = [
            {"seed": q["seed"], **{v: {k: x for k, x in r.items() if k != "final_dir"} for v, r in q["runs"].items()}}
            for q in quality
        ]
        write_text(work / "distill_speed.json", json.dumps({"meta": meta, "seeds": records}, indent=2, default=str))

    online = _train_timed(recipe, data, ensemble, work / "student-online", recipe.seed)
    rows.append({"variant": "online", **online, "total_s": online["train_s"]})
    publish()

    cache_dir = work / "teacher-cache"
    if cache_dir.exists():
        shutil.rmtree(cache_dir)  # the build is part of what is timed
    start = time.perf_counter()
    cache = open_teacher_cache(recipe, work, data, teachers, ensemble)
    build_s = time.perf_counter() - start  # includes opening (checksums), as a run pays it
    meta["build_s"] = build_s
    cached = _train_timed(recipe, data, cache, work / "student-cached", recipe.seed)
    meta["topk_mass"] = _topk_mass(cache)
    rows.append(
        {
            "variant": f"cached (top-{args.top_k}, {recipe.teachers.cache_dtype})",
            **cached,
            "build_s": build_s,
            "total_s": cached["train_s"] + build_s,
            "bytes_per_token": cache.manifest["bytes_per_token"],
            "recon_kl": _reconstruction_kl(
                ensemble, cache, data.train, recipe.distillation.temperature, args.kl_blocks
            ),
        }
    )
    publish()

    for i in range(args.seeds):
        seed = recipe.seed + i
        runs = {"online": online, "cached": cached}
        if i > 0:
            runs = {
                "online": _train_timed(recipe, data, ensemble, work / f"student-online-{seed}", seed),
                "cached": _train_timed(recipe, data, cache, work / f"student-cached-{seed}", seed),
            }
        if args.baseline:
            runs["baseline"] = _train_timed(recipe, data, None, work / f"student-baseline-{seed}", seed)
        quality.append({"seed": seed, "runs": runs})
        for run in runs.values():
            run["blimp"] = _blimp(run["final_dir"], data.tokenizer, root, args.blimp_limit)
            rows[0]["blimp"], rows[1]["blimp"] = online.get("blimp"), cached.get("blimp")
            publish()


if __name__ == "__main__":
    main()

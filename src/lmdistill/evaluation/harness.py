"""The same tasks through lm-evaluation-harness (``pip install lmdistill[harness]``): local data, no Hub.

Each of our tasks becomes lm-eval task YAMLs in a temporary folder. Where lm-eval 0.4.13 ships the task, the
YAML ``include``s lm-eval's own packaged file (prompt, choices, target, metrics all come from lm-eval) and only
points the dataset at the local file (``dataset_path: json`` or ``csv`` with ``data_files``). WinoGrande's
local file is already in partial-scoring form, so its YAML names the fields instead of lm-eval's
``preprocess_winogrande`` functions; MMLU's CSV has ``choice0..3`` columns, so lm-eval's prompt template is
read from its file and ``choices[i]`` rewritten to ``choice{i}``. The model is loaded by lm-eval's Hugging Face
backend (``HFLM(pretrained=MODEL_DIR)``). lm-eval is imported here only, never by the rest of the package.

Any other task file (a user's ``--task-file``) is translated: its rows as our reader reads them (after ``fields``
and ``filter``, with the sub-task name added) are copied to a JSON-lines file that lm-eval loads, and its
templates become lm-eval's ``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target`` (the same Jinja2 text; a list
of choice templates or a per-element template becomes one template that renders the list, a ``labels`` gold an
``.index(...)`` of the value), so lm-eval renders the prompts itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lmdistill.data.root import resolve_data_root
from lmdistill.evaluation.metrics import aggregate
from lmdistill.evaluation.tasks import TaskSpec, load_docs, mmlu_subjects
from lmdistill.registry import did_you_mean

__all__ = ["evaluate_with_harness", "harness_task_configs"]

logger = logging.getLogger(__name__)

PREFIX = "lmdistill_"
#: packaged tasks run through lm-eval's own task YAMLs (the others are translated from their task files)
NATIVE = ("arc_easy", "arc_easy_validation", "blimp", "hellaswag", "mmlu", "winogrande")


def _lm_eval_tasks_dir() -> Path:
    try:
        import lm_eval
    except ImportError as err:
        raise ImportError(
            "the harness backend needs lm-evaluation-harness: pip install 'lmdistill[harness]' (lm-eval 0.4.13)"
        ) from err
    return Path(lm_eval.__file__).parent / "tasks"


def _mmlu_template(tasks_dir: Path) -> str:
    text = (tasks_dir / "mmlu" / "default" / "_default_template_yaml").read_text(encoding="utf-8")
    template = yaml.safe_load(text)["doc_to_text"]
    return re.sub(r"choices\[(\d)\]", r"choice\1", template)


def _field(path: str) -> str:
    """A Jinja2 expression for a dotted field path, by subscripts: ``choices.text`` -> ``choices["text"]``."""
    first, *rest = path.split(".")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", first):
        raise ValueError(f"the harness backend cannot name the field {first!r} in a template (not an identifier)")
    return first + "".join(f"[{p}]" if p.isdigit() else f"[{json.dumps(p)}]" for p in rest)


def _list_template(choices: Any) -> str | list[str]:
    """lm-eval's ``doc_to_choice`` for our choices (or partial scoring's contexts).

    A field, or a template that renders the list (lm-eval evaluates the rendered text as a Python literal).
    """
    if choices.field is not None:
        if choices.template is None:
            return "{{ " + _field(choices.field) + " }}"
        return (
            "{% set out = [] %}{% for choice in " + _field(choices.field) + " %}{% set item %}"
            + choices.template.source + "{% endset %}{% set _ = out.append(item) %}{% endfor %}{{ out }}"
        )  # fmt: skip
    if all(t.is_constant for t in choices.templates):
        return [t.source for t in choices.templates]
    parts = "".join(f"{{% set c{i} %}}{t.source}{{% endset %}}" for i, t in enumerate(choices.templates))
    return parts + "{{ [" + ", ".join(f"c{i}" for i in range(len(choices.templates))) + "] }}"


def _gold_template(gold: Any) -> int | str:
    """lm-eval's ``doc_to_target`` (partial scoring: ``doc_to_text``) for our gold: an index or a template of one."""
    if gold.index is not None:
        return gold.index
    value = _field(gold.field)
    if gold.labels is None and gold.labels_field is None:
        return "{{ " + value + " }}"
    labels = json.dumps([str(x) for x in gold.labels]) if gold.labels is not None else (
        "(" + _field(gold.labels_field) + " | map('string') | list)"
    )  # fmt: skip
    return "{{ " + labels + ".index(" + value + " | string) }}"


def _text(template: Any, keys: set[str]) -> str:
    """A template as lm-eval's ``doc_to_text`` / ``doc_to_target``.

    Plain text that is also a field's name would be read by lm-eval as that field, so it is wrapped in a raw block.
    """
    if template.is_constant and template.source in keys:
        return "{% raw %}" + template.source + "{% endraw %}"
    return template.source


def _task_file_configs(spec: TaskSpec, root: Path, workdir: Path) -> list[tuple[str, dict[str, Any]]]:
    definition = spec.definition
    configs = []
    for subset, path in definition.files(root, spec.subsets, spec.name):
        rows = []
        for _, variables in definition.rows(path, subset):
            rows.append(variables)
            if definition.limit is not None and len(rows) >= definition.limit:
                break
        if not rows:
            raise ValueError(f"task {spec.name}: no items in {path}")
        name = f"{PREFIX}{spec.name}" + (f"_{subset}" if subset is not None else "")
        copy = workdir / f"{name}.rows.jsonl"
        copy.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        keys = set(rows[0])
        config: dict[str, Any] = {
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": str(copy)}},
            "training_split": None,
            "validation_split": None,
            "fewshot_split": None,
            "test_split": "test",
            "output_type": "multiple_choice",
            "target_delimiter": spec.target_delimiter,
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in spec.metrics],
        }
        if definition.scoring == "partial":  # lm-eval's "multiple inputs": the gold comes from doc_to_text
            config.update(
                doc_to_text=_gold_template(definition.gold),
                doc_to_choice=_list_template(definition.choices),
                doc_to_target=_text(definition.continuation, keys),
            )
        else:
            config.update(
                doc_to_text=_text(definition.context, keys),
                doc_to_choice=_list_template(definition.choices),
                doc_to_target=_gold_template(definition.gold),
            )
        configs.append((name, config))
    return configs


def harness_task_configs(
    spec: TaskSpec, root: Path, tasks_dir: Path, workdir: str | os.PathLike[str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The lm-eval task configs of one of our tasks: ``[(lm-eval task name, YAML dict), ...]``, sub-tasks in order.

    Args:
        spec (TaskSpec): our task.
        root (Path): the data root.
        tasks_dir (Path): lm-eval's packaged ``tasks`` folder.
        workdir (str | PathLike | None): where a translated task file's rows are copied for lm-eval (needed
            for tasks other than the packaged ones in :data:`NATIVE`).

    Returns:
        list[tuple[str, dict]]: one config per lm-eval task (one per BLiMP paradigm / MMLU subject / sub-task).

    Raises:
        KeyError: a task the harness backend does not know.
        ValueError: a task file without ``workdir``, or one the translation cannot express.
    """
    if spec.definition is not None and not (spec.definition.packaged and spec.name in NATIVE):
        if workdir is None:
            raise ValueError(f"task {spec.name}: translating a task file for lm-eval needs a workdir for its rows")
        return _task_file_configs(spec, root, Path(workdir))
    local = {"dataset_name": None, "training_split": None, "validation_split": None, "fewshot_split": None}
    extra = {} if spec.target_delimiter == " " else {"target_delimiter": spec.target_delimiter}
    if spec.name == "blimp":
        from lmdistill.evaluation.blimp import list_paradigms

        names = list(spec.subsets) if spec.subsets is not None else list_paradigms(root)
        return [
            (
                f"{PREFIX}blimp_{p}",
                {
                    "include": str(tasks_dir / "blimp" / f"{p}.yaml"),
                    **local,
                    "dataset_path": "json",
                    "dataset_kwargs": {"data_files": {"train": str(root / "blimp" / f"{p}.jsonl")}},
                    "validation_split": "train",
                    **extra,
                },
            )
            for p in names
        ]
    if spec.name in ("arc_easy", "arc_easy_validation", "hellaswag"):
        split = {"arc_easy": "test", "arc_easy_validation": "validation", "hellaswag": "validation"}[spec.name]
        relative = {
            "arc_easy": "zero_shot/arc_easy/test.jsonl",
            "arc_easy_validation": "zero_shot/arc_easy/validation.jsonl",
            "hellaswag": "zero_shot/hellaswag/hellaswag_val.jsonl",
        }[spec.name]
        include = "arc/arc_easy.yaml" if spec.name.startswith("arc") else "hellaswag/hellaswag.yaml"
        config = {
            "include": str(tasks_dir / include),
            **local,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {split: str(root / relative)}},
            "test_split": split,
            **extra,
        }
        return [(f"{PREFIX}{spec.name}", config)]
    if spec.name == "winogrande":
        config = {
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"validation": str(root / "zero_shot/winogrande/dev.jsonl")}},
            "output_type": "multiple_choice",
            "validation_split": "validation",
            "doc_to_text": "gold",  # an int: lm-eval's "multiple inputs" mode, the options are the contexts
            "doc_to_choice": "context_options",
            "doc_to_target": "continuation",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            **extra,
        }
        return [(f"{PREFIX}winogrande", config)]
    if spec.name == "mmlu":
        template = _mmlu_template(tasks_dir)
        names = list(spec.subsets) if spec.subsets is not None else mmlu_subjects(root)
        return [
            (
                f"{PREFIX}mmlu_{s}",
                {
                    "include": str(tasks_dir / "mmlu" / "default" / f"mmlu_{s}.yaml"),
                    **local,
                    "tag": [],
                    "dataset_path": "csv",
                    # keep_default_na: a choice that reads "None" or "NA" stays text, as in the original data
                    "dataset_kwargs": {
                        "data_files": {"test": str(root / f"zero_shot/mmlu/test/{s}_test.csv")},
                        "keep_default_na": False,
                    },
                    "doc_to_text": template,
                    **extra,
                },
            )
            for s in names
        ]
    known = ["arc_easy", "arc_easy_validation", "blimp", "hellaswag", "mmlu", "winogrande"]
    raise KeyError(f"the harness backend has no task {spec.name!r}.{did_you_mean(spec.name, known)} Known: {known}")


def evaluate_with_harness(
    model_dir: str | os.PathLike[str],
    tasks: Sequence[TaskSpec],
    *,
    data_root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    samples: bool = False,
) -> dict[str, dict[str, Any]]:
    """Evaluate a checkpoint folder on our tasks with lm-eval's HF backend and lm-eval's own scoring.

    Args:
        model_dir (str | PathLike): a Hugging Face checkpoint folder with its tokenizer.
        tasks (Sequence[TaskSpec]): our tasks.
        data_root (str | PathLike | None): the data root.
        limit (int | None): items per lm-eval task (per BLiMP paradigm / MMLU subject), lm-eval's ``limit``.
        batch_size (int): lm-eval's batch size.
        device (str): lm-eval's device.
        samples (bool): also return each item's log-likelihoods as lm-eval computed them.

    Returns:
        dict[str, dict]: the same structure as :func:`~lmdistill.evaluation.runner.evaluate_tasks`; every item's
        metric is lm-eval's (its ``samples``), grouped as ours; plus ``backend: "lm-eval <version>"``.

    Raises:
        ImportError: lm-eval is not installed.
        RuntimeError: lm-eval's item counts differ from ours (the local data was read differently).
    """
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tasks_dir = _lm_eval_tasks_dir()
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    root = resolve_data_root(data_root)
    with tempfile.TemporaryDirectory(prefix="lmdistill-harness-") as tmp:
        configs = {spec.name: harness_task_configs(spec, root, tasks_dir, tmp) for spec in tasks}
        for pairs in configs.values():
            for name, config in pairs:
                Path(tmp, f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **config}), encoding="utf-8")
        model = HFLM(pretrained=str(model_dir), batch_size=batch_size, device=device)
        out = lm_eval.simple_evaluate(
            model=model,
            tasks=[name for pairs in configs.values() for name, _ in pairs],
            task_manager=TaskManager(include_path=tmp, include_defaults=False),
            limit=limit,
            num_fewshot=0,
            bootstrap_iters=0,
            log_samples=True,
        )
    results = {}
    for spec in tasks:
        docs = load_docs(spec, root, limit)
        items, rows = [], []
        for name, _ in configs[spec.name]:
            for sample in sorted(out["samples"][name], key=lambda s: s["doc_id"]):
                items.append({m: float(sample[m]) for m in spec.metrics})
                lls = [float(r[0]) for r in sample["filtered_resps"]]
                rows.append({"lls": lls, "is_greedy": [bool(r[1]) for r in sample["filtered_resps"]], **items[-1]})
        if len(items) != len(docs):
            raise RuntimeError(f"{spec.name}: lm-eval scored {len(items)} items where our loader read {len(docs)}")
        result = aggregate(spec, docs, items)
        result["backend"] = f"lm-eval {lm_eval.__version__}"
        for row, doc in zip(rows, docs, strict=True):
            row["gold"] = doc.gold
        if samples:
            result["samples"] = rows
        results[spec.name] = result
    return results

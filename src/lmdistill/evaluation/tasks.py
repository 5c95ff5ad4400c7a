r"""Zero-shot tasks: data under the data root plus a small spec each, written as lm-evaluation-harness 0.4.13 has them.

Every task is multiple choice: a :class:`Doc` has one ``(context, continuation)`` request per choice and a gold
index. ``acc`` takes the choice with the highest log-likelihood; ``acc_norm`` divides each log-likelihood by the
length of the choice text in characters first (lm-eval's ``acc_norm``). Ties go to the first choice (argmax).

| task | data (under the data root) | lm-eval task | requests per item |
|---|---|---|---|
| blimp | blimp/<paradigm>.jsonl | blimp_<paradigm> | ``("", " " + good)``, ``("", " " + bad)`` |
| arc_easy | zero_shot/arc_easy/test.jsonl | arc_easy | ``("Question: q\nAnswer:", " " + choice)`` |
| arc_easy_validation | zero_shot/arc_easy/validation.jsonl | arc_easy on its validation split | as arc_easy |
| winogrande | zero_shot/winogrande/dev.jsonl | winogrande (partial) | ``(sentence up to option, " " + rest)`` |
| mmlu | zero_shot/mmlu/test/<subject>_test.csv | mmlu_<subject>, zero-shot | ``(description + question, " A")``.. |
| hellaswag | zero_shot/hellaswag/hellaswag_val.jsonl | hellaswag | ``(activity: context, " " + ending)`` |

Adding a task is a loader (data file -> list of :class:`Doc`) and one :class:`TaskSpec` in :data:`TASKS`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmdistill.data.root import resolve_data_root
from lmdistill.evaluation.readers import MalformedRowError, data_file, read_csv, read_jsonl, require
from lmdistill.registry import Registry

__all__ = ["TASKS", "Doc", "TaskSpec", "get_task", "load_docs"]


@dataclass(frozen=True)
class Doc:
    """One multiple-choice item.

    Attributes:
        contexts (tuple[str, ...]): the context of each choice (the same string for all but partial scoring).
        continuations (tuple[str, ...]): the scored text of each choice, target delimiter included.
        gold (int): index of the right choice.
        choice_lengths (tuple[int, ...]): characters of each choice text (without the delimiter), for acc_norm.
        groups (tuple[tuple[str, str], ...]): sub-groups it is reported in, e.g. (("field", "syntax"),
            ("paradigm", "adjunct_island")), the finest last.
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    choice_lengths: tuple[int, ...]
    groups: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its data, how a row becomes a :class:`Doc`, and which metrics lm-eval reports for it.

    Attributes:
        name (str): the name recipes and ``--tasks`` use.
        description (str): one line for listings and reports.
        loader (Callable): ``loader(data_root, spec, limit) -> list[Doc]``.
        metrics (tuple[str, ...]): "acc" and, where lm-eval reports it, "acc_norm".
        group_keys (tuple[str, ...]): sub-groups reported (finest last; ``limit`` applies per finest group).
        source (str): the lm-eval task(s) it reproduces.
        target_delimiter (str): put before each continuation (lm-eval's default " ").
        subsets (tuple[str, ...] | None): only these sub-tasks (BLiMP paradigms, MMLU subjects); None = all.
    """

    name: str
    description: str
    loader: Callable[[Path, TaskSpec, int | None], list[Doc]]
    metrics: tuple[str, ...] = ("acc",)
    group_keys: tuple[str, ...] = ()
    source: str = ""
    target_delimiter: str = " "
    subsets: tuple[str, ...] | None = None

    def replace(self, **changes: object) -> TaskSpec:
        """A copy with some fields changed, e.g. ``spec.replace(subsets=("anatomy",))``."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


TASKS: Registry[TaskSpec] = Registry("task")


def get_task(name: str) -> TaskSpec:
    """The spec registered as ``name``.

    Raises:
        KeyError: an unknown name; the message lists the known tasks and the closest matches.
    """
    return TASKS.get(name)


def load_docs(spec: TaskSpec | str, data_root: str | os.PathLike[str] | None = None, limit: int | None = None):
    """Load a task's items.

    Args:
        spec (TaskSpec | str): the task or its name.
        data_root (str | PathLike | None): the data root; None resolves it as ``resolve_data_root`` does.
        limit (int | None): the first N items of each finest sub-group (a BLiMP paradigm, an MMLU subject), or
            of the task when it has none, as lm-eval's ``--limit``; None = all.

    Returns:
        list[Doc]: the items, in file order.

    Raises:
        KeyError: an unknown task or sub-task (the message lists the known ones).
        FileNotFoundError: a missing data file (the message names the path and the data root).
        ValueError: ``limit`` < 0, or a malformed row (the message names ``file:line``).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    spec = get_task(spec) if isinstance(spec, str) else spec
    return spec.loader(resolve_data_root(data_root), spec, limit)


def _choices(doc_contexts: list[str], continuations: list[str], gold: int, delimiter: str, **groups: str) -> Doc:
    return Doc(
        contexts=tuple(doc_contexts),
        continuations=tuple(delimiter + c for c in continuations),
        gold=gold,
        choice_lengths=tuple(len(c) for c in continuations),
        groups=tuple(groups.items()),
    )


# ----------------------------------------------------------------------------------------------------- BLiMP


def _load_blimp(root: Path, spec: TaskSpec, limit: int | None) -> list[Doc]:
    from lmdistill.evaluation.blimp import load_blimp

    return [
        _choices(["", ""], [p.good, p.bad], 0, spec.target_delimiter, field=p.field, paradigm=p.paradigm)
        for p in load_blimp(root, spec.subsets, limit)
    ]


# ------------------------------------------------------------------------------------------------- ARC-Easy


def _arc_loader(split: str) -> Callable[[Path, TaskSpec, int | None], list[Doc]]:
    def load(root: Path, spec: TaskSpec, limit: int | None) -> list[Doc]:
        path = data_file(root, f"zero_shot/arc_easy/{split}.jsonl", spec.name)
        docs = []
        for where, row in read_jsonl(path, limit):
            require(row, where, question=str, choices=dict, answerKey=str)
            texts, labels = row["choices"].get("text"), row["choices"].get("label")
            if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels) or not texts:
                raise MalformedRowError(f"{where}: choices must hold equally long lists 'text' and 'label'")
            if row["answerKey"] not in labels:
                raise MalformedRowError(f"{where}: answerKey {row['answerKey']!r} is not one of the labels {labels}")
            context = f"Question: {row['question']}\nAnswer:"
            gold = labels.index(row["answerKey"])
            docs.append(_choices([context] * len(texts), texts, gold, spec.target_delimiter))
        return docs

    return load


# ----------------------------------------------------------------------------------------------- WinoGrande


def _load_winogrande(root: Path, spec: TaskSpec, limit: int | None) -> list[Doc]:
    """Partial scoring (Trinh & Le 2018; lm-eval's winogrande): the rest of the sentence after each option."""
    path = data_file(root, "zero_shot/winogrande/dev.jsonl", spec.name)
    docs = []
    for where, row in read_jsonl(path, limit):
        require(row, where, context_options=list, continuation=str, gold=int)
        options = row["context_options"]
        if len(options) != 2 or not all(isinstance(o, str) for o in options) or row["gold"] not in (0, 1):
            raise MalformedRowError(f"{where}: expected two string context_options and gold 0 or 1")
        docs.append(
            Doc(
                contexts=tuple(options),
                continuations=(spec.target_delimiter + row["continuation"],) * 2,
                gold=row["gold"],
                choice_lengths=tuple(len(o) for o in options),  # lm-eval's choices here are the contexts
            )
        )
    return docs


# ---------------------------------------------------------------------------------------------------- MMLU

MMLU_COLUMNS = ("question", "choice0", "choice1", "choice2", "choice3", "answer")


def mmlu_subjects(root: Path) -> list[str]:
    """Sorted MMLU subjects found as ``<root>/zero_shot/mmlu/test/<subject>_test.csv`` (57 in MMLU)."""
    folder = root / "zero_shot" / "mmlu" / "test"
    if not folder.is_dir():
        raise FileNotFoundError(f"task mmlu: folder not found: {folder} (data root {root})")
    return sorted(p.name[: -len("_test.csv")] for p in folder.glob("*_test.csv"))


def _load_mmlu(root: Path, spec: TaskSpec, limit: int | None) -> list[Doc]:
    """Zero-shot MMLU in lm-eval's default format: a subject description, the question, lettered choices."""
    from lmdistill.registry import did_you_mean

    available = mmlu_subjects(root)
    subjects = available if spec.subsets is None else list(spec.subsets)
    for s in subjects:
        if s not in available:
            raise KeyError(f"Unknown MMLU subject {s!r}.{did_you_mean(s, available)} Known: {', '.join(available)}")
    docs = []
    for subject in subjects:
        path = data_file(root, f"zero_shot/mmlu/test/{subject}_test.csv", spec.name)
        description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}."
        for where, row in read_csv(path, MMLU_COLUMNS, limit):
            if row["answer"] not in ("0", "1", "2", "3"):
                raise MalformedRowError(f"{where}: answer must be 0, 1, 2 or 3, got {row['answer']!r}")
            a, b, c, d = (row[f"choice{i}"] for i in range(4))
            context = f"{description}\n\n{row['question'].strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:"
            gold = int(row["answer"])
            docs.append(_choices([context] * 4, list("ABCD"), gold, spec.target_delimiter, subject=subject))
    return docs


# ----------------------------------------------------------------------------------------------- HellaSwag


def _hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag ``preprocess``: strip, WikiHow "[title]" to ". ", drop other [tags], squeeze spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _load_hellaswag(root: Path, spec: TaskSpec, limit: int | None) -> list[Doc]:
    """HellaSwag's official JSONL (``ctx_a``, ``ctx_b``, ``activity_label``, ``endings``, ``label``), validation."""
    path = data_file(root, "zero_shot/hellaswag/hellaswag_val.jsonl", spec.name)
    docs = []
    for where, row in read_jsonl(path, limit):
        require(row, where, ctx_a=str, ctx_b=str, activity_label=str, endings=list, label=(int, str))
        endings = row["endings"]
        label = str(row["label"])
        if not endings or not all(isinstance(e, str) for e in endings):
            raise MalformedRowError(f"{where}: endings must be a non-empty list of strings")
        if not label.isdigit() or int(label) >= len(endings):
            raise MalformedRowError(f"{where}: label must index the {len(endings)} endings, got {row['label']!r}")
        query = _hellaswag_clean(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
        choices = [_hellaswag_clean(e) for e in endings]
        docs.append(_choices([query] * len(choices), choices, int(label), spec.target_delimiter))
    return docs


for _spec in (
    TaskSpec(
        "blimp",
        "BLiMP minimal pairs, 67 paradigms (Warstadt et al. 2020)",
        _load_blimp,
        group_keys=("field", "paradigm"),
        source="lm-eval blimp_<paradigm> (group blimp)",
    ),
    TaskSpec(
        "arc_easy",
        "ARC-Easy, test split (Clark et al. 2018)",
        _arc_loader("test"),
        ("acc", "acc_norm"),
        source="lm-eval arc_easy",
    ),
    TaskSpec(
        "arc_easy_validation",
        "ARC-Easy, validation split",
        _arc_loader("validation"),
        ("acc", "acc_norm"),
        source="lm-eval arc_easy (validation split)",
    ),
    TaskSpec(
        "winogrande",
        "WinoGrande dev, partial scoring (Sakaguchi et al. 2020)",
        _load_winogrande,
        source="lm-eval winogrande",
    ),
    TaskSpec(
        "mmlu",
        "MMLU test, zero-shot, 57 subjects (Hendrycks et al. 2021)",
        _load_mmlu,
        group_keys=("subject",),
        source="lm-eval mmlu_<subject> (group mmlu)",
    ),
    TaskSpec(
        "hellaswag",
        "HellaSwag validation, official JSONL (Zellers et al. 2019)",
        _load_hellaswag,
        ("acc", "acc_norm"),
        source="lm-eval hellaswag",
    ),
):
    TASKS.register(_spec.name)(_spec)

"""What ``lmdistill data fetch`` reads from the Hugging Face Hub, and how each source becomes the data root's files.

A :class:`HubSource` names one Hub dataset repository at one revision, the files it reads there (glob patterns read
with a ``datasets`` packaged builder, ``parquet`` or ``text``, one split per pattern) and a converter that writes
the files the recipes and task readers expect. Most sources read the Hub's own Parquet export of the dataset
(``refs/convert/parquet``, ``<config>/<split>/NNNN.parquet``), which exists whether or not the repository's main
branch still holds a loading script (``datasets`` >= 4 runs none). The layout each converter writes is the one
``lmdistill.data.corpus``, ``lmdistill.evaluation.tasks`` and the packaged task files read; see the README, "Data".

This module is torch-free and imports ``datasets`` nowhere: converters only iterate over the rows they are given.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "BABYLM_SOURCES",
    "BLIMP_PARADIGMS",
    "CONVERSION_VERSION",
    "SOURCES",
    "HubSource",
    "svamp_split",
    "winogrande_partial",
]

CONVERSION_VERSION = 1
"""Bumped when a converter's output changes, so that a second fetch rewrites what an older one wrote."""

PARQUET_EXPORT = "refs/convert/parquet"
"""The Hub's automatic Parquet export of a dataset repository (a branch of every repository with a viewer)."""

Splits = Mapping[str, Any]
"""Input name -> its rows (a ``datasets.Dataset``: iterable of dicts, and ``ds[column]`` gives a column)."""


@dataclass(frozen=True)
class HubSource:
    """One dataset repository on the Hub and the data root files made from it."""

    name: str
    """What ``--only`` names, e.g. "blimp"."""
    description: str
    """One line for listings and the PROVENANCE note."""
    repo: str
    """Hub dataset id, e.g. "nyu-mll/blimp"."""
    revision: str
    """Branch, tag or commit read; the commit it resolved to is recorded in the manifest."""
    builder: Literal["parquet", "text"]
    """The ``datasets`` packaged builder that reads the files."""
    inputs: dict[str, str]
    """Split name -> glob pattern of its files in the repository at ``revision``."""
    license: str
    """The licence, as the dataset's authors state it."""
    writes: str
    """What it writes under the data root, e.g. "blimp/<paradigm>.jsonl"."""
    convert: Callable[[Splits, Path], dict[str, int]]
    """(splits, folder) -> {relative path written: rows}; writes plain files under the folder."""
    tasks: tuple[str, ...] = ()
    """Evaluation tasks (``lmdistill eval --tasks`` names) whose data it provides."""
    corpus_sources: tuple[str, ...] = ()
    """Corpus source folders (``data.sources`` names of a recipe) it provides."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Lines for the PROVENANCE note: what differs from the original, what is left to do by hand."""


# ----------------------------------------------------------------------------------------------- writing helpers


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line (UTF-8); return the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def _write_lines(path: Path, lines: Iterable[str]) -> int:
    """Write text lines, each ending with a newline; return the number of lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
            count += 1
    return count


def _rel(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


# ------------------------------------------------------------------------------------------------ BabyLM corpus

BABYLM_SOURCES = (
    "aochildes",
    "bnc_spoken",
    "cbt",
    "children_stories",
    "gutenberg",
    "open_subtitles",
    "qed",
    "simple_wikipedia",
    "switchboard",
    "wikipedia",
)
"""The ten sources of the BabyLM 2023 corpus, each one file per split; they become ``corpus/<source>/``."""


def _convert_babylm(splits: Splits, out: Path) -> dict[str, int]:
    written = {}
    for source in BABYLM_SOURCES:
        for split in ("train", "dev"):
            path = out / "corpus" / source / f"{split}.txt"
            written[_rel(path, out)] = _write_lines(path, splits[f"{source}_{split}"]["text"])
    return written


# ---------------------------------------------------------------------------------------------------------- BLiMP

BLIMP_PARADIGMS = (
    "adjunct_island", "anaphor_gender_agreement", "anaphor_number_agreement", "animate_subject_passive",
    "animate_subject_trans", "causative", "complex_NP_island",
    "coordinate_structure_constraint_complex_left_branch", "coordinate_structure_constraint_object_extraction",
    "determiner_noun_agreement_1", "determiner_noun_agreement_2", "determiner_noun_agreement_irregular_1",
    "determiner_noun_agreement_irregular_2", "determiner_noun_agreement_with_adj_2",
    "determiner_noun_agreement_with_adj_irregular_1", "determiner_noun_agreement_with_adj_irregular_2",
    "determiner_noun_agreement_with_adjective_1", "distractor_agreement_relational_noun",
    "distractor_agreement_relative_clause", "drop_argument", "ellipsis_n_bar_1", "ellipsis_n_bar_2",
    "existential_there_object_raising", "existential_there_quantifiers_1", "existential_there_quantifiers_2",
    "existential_there_subject_raising", "expletive_it_object_raising", "inchoative", "intransitive",
    "irregular_past_participle_adjectives", "irregular_past_participle_verbs",
    "irregular_plural_subject_verb_agreement_1", "irregular_plural_subject_verb_agreement_2",
    "left_branch_island_echo_question", "left_branch_island_simple_question",
    "matrix_question_npi_licensor_present", "npi_present_1", "npi_present_2", "only_npi_licensor_present",
    "only_npi_scope", "passive_1", "passive_2", "principle_A_c_command", "principle_A_case_1",
    "principle_A_case_2", "principle_A_domain_1", "principle_A_domain_2", "principle_A_domain_3",
    "principle_A_reconstruction", "regular_plural_subject_verb_agreement_1",
    "regular_plural_subject_verb_agreement_2", "sentential_negation_npi_licensor_present",
    "sentential_negation_npi_scope", "sentential_subject_island", "superlative_quantifiers_1",
    "superlative_quantifiers_2", "tough_vs_raising_1", "tough_vs_raising_2", "transitive", "wh_island",
    "wh_questions_object_gap", "wh_questions_subject_gap", "wh_questions_subject_gap_long_distance",
    "wh_vs_that_no_gap", "wh_vs_that_no_gap_long_distance", "wh_vs_that_with_gap",
    "wh_vs_that_with_gap_long_distance",
)  # fmt: skip
"""BLiMP's 67 paradigms: the Hub configs of nyu-mll/blimp, lm-eval's blimp_<paradigm> tasks, each row's ``UID``."""

_BLIMP_KEYS = ("sentence_good", "sentence_bad", "field", "linguistics_term", "UID", "simple_LM_method",
               "one_prefix_method", "two_prefix_method", "lexically_identical")  # fmt: skip


def _convert_blimp(splits: Splits, out: Path) -> dict[str, int]:
    """One JSONL per paradigm, keyed as the original release (alexwarstadt/blimp).

    The Hub's int ``pair_id`` is written back as the string ``pairID``; the 67 paradigms must all be there.
    """
    by_paradigm: dict[str, list[dict[str, Any]]] = {}
    for row in splits["train"]:
        record = {key: row[key] for key in _BLIMP_KEYS}
        record["pairID"] = str(row["pair_id"])
        by_paradigm.setdefault(row["UID"], []).append(record)
    missing = sorted(set(BLIMP_PARADIGMS) - set(by_paradigm))
    unknown = sorted(set(by_paradigm) - set(BLIMP_PARADIGMS))
    if missing or unknown:
        raise ValueError(f"BLiMP: expected the 67 paradigms; missing {missing or 'none'}, unknown {unknown or 'none'}")
    written = {}
    for paradigm in BLIMP_PARADIGMS:
        path = out / "blimp" / f"{paradigm}.jsonl"
        written[_rel(path, out)] = _write_jsonl(path, by_paradigm[paradigm])
    return written


# ------------------------------------------------------------------------------------------ zero-shot benchmarks


def _convert_arc_easy(splits: Splits, out: Path) -> dict[str, int]:
    written = {}
    for split in ("train", "validation", "test"):
        rows = (
            {
                "id": row["id"],
                "question": row["question"],
                "choices": {"text": list(row["choices"]["text"]), "label": list(row["choices"]["label"])},
                "answerKey": row["answerKey"],
            }
            for row in splits[split]
        )
        path = out / "zero_shot" / "arc_easy" / f"{split}.jsonl"
        written[_rel(path, out)] = _write_jsonl(path, rows)
    return written


def winogrande_partial(row: Mapping[str, Any]) -> dict[str, Any]:
    """A WinoGrande row (``sentence`` with one ``_``, ``option1``, ``option2``, ``answer`` "1"/"2") in partial form.

    As lm-evaluation-harness 0.4.13's ``preprocess_winogrande``: each option ends its own context (the sentence up
    to the blank), the rest of the sentence after the blank, stripped, is the continuation scored for both.

    Returns:
        dict: ``{"context_options": [a, b], "continuation": str, "gold": 0 or 1}``.

    Raises:
        ValueError: no blank in the sentence, or an answer other than "1" / "2".
    """
    sentence = row["sentence"]
    if "_" not in sentence or row["answer"] not in ("1", "2"):
        raise ValueError(f"WinoGrande: expected a sentence with a blank (_) and answer 1 or 2, got {dict(row)}")
    blank = sentence.index("_")
    return {
        "context_options": [sentence[:blank] + row["option1"], sentence[:blank] + row["option2"]],
        "continuation": sentence[blank + 1 :].strip(),
        "gold": int(row["answer"]) - 1,
    }


def _convert_winogrande(splits: Splits, out: Path) -> dict[str, int]:
    path = out / "zero_shot" / "winogrande" / "dev.jsonl"
    return {_rel(path, out): _write_jsonl(path, (winogrande_partial(row) for row in splits["validation"]))}


_MMLU_HEADER = ("question", "choice0", "choice1", "choice2", "choice3", "answer")


def _convert_mmlu(splits: Splits, out: Path) -> dict[str, int]:
    """``zero_shot/mmlu/<split>/<subject>_<split>.csv`` from the ``all`` config, split by its ``subject`` column.

    The answer is an index 0-3 (the Hub's ClassLabel A-D).
    """
    written = {}
    for split in ("dev", "test"):
        by_subject: dict[str, list[list[Any]]] = {}
        for row in splits[split]:
            choices = list(row["choices"])
            if len(choices) != 4 or row["answer"] not in range(4):
                raise ValueError(f"MMLU {split}: expected 4 choices and an answer index 0-3, got {dict(row)}")
            by_subject.setdefault(row["subject"], []).append([row["question"], *choices, row["answer"]])
        for subject, rows in sorted(by_subject.items()):
            path = out / "zero_shot" / "mmlu" / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(_MMLU_HEADER)
                writer.writerows(rows)
            written[_rel(path, out)] = len(rows)
    return written


_HELLASWAG_KEYS = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "split", "split_type", "label", "endings",
                   "source_id")  # fmt: skip


def _convert_hellaswag(splits: Splits, out: Path) -> dict[str, int]:
    """The official ``hellaswag_val.jsonl`` form (rowanz/hellaswag): the Hub's string label back to an int."""
    rows = ({**{key: row[key] for key in _HELLASWAG_KEYS}, "label": int(row["label"])} for row in splits["validation"])
    path = out / "zero_shot" / "hellaswag" / "hellaswag_val.jsonl"
    return {_rel(path, out): _write_jsonl(path, rows)}


# ------------------------------------------------------------------------- rationale tasks (distilling step-by-step)


def _step_by_step(task: str, split_map: dict[str, str], keys: tuple[str, ...]):
    """A converter to distilling step-by-step's ``rationale/<task>/<task>_<split>.json`` files.

    JSON lines with the Hub's columns ``keys``, rows in the Hub's order (step-by-step wrote its files with
    ``Dataset.to_json`` from the same Hub datasets, and its ``llm/<split>_CoT_<i>.json`` follow that order).
    """

    def convert(splits: Splits, out: Path) -> dict[str, int]:
        written = {}
        for ours, hub in split_map.items():
            path = out / "rationale" / task / f"{task}_{ours}.json"
            written[_rel(path, out)] = _write_jsonl(path, ({key: row[key] for key in keys} for row in splits[hub]))
        return written

    return convert


def svamp_split(problems: list[dict[str, Any]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Distilling step-by-step's SVAMP split, as its ``SVAMPDatasetLoader.load_from_source`` makes it.

    ``input`` = Body + newline + Question, ``label`` = Equation; then ``numpy.random.RandomState(0).permutation``
    of the rows: the first 800 are train, the rest test.

    Args:
        problems (list[dict]): SVAMP's 1,000 problems in ``SVAMP.json`` order (ID chal-1 .. chal-1000).

    Returns:
        tuple[list, list]: train and test rows, ``{"input", "label"}`` each.
    """
    import numpy as np

    rows = [{"input": f"{p['Body']}\n{p['Question']}", "label": p["Equation"]} for p in problems]
    order = np.random.RandomState(seed=0).permutation(len(rows))
    return [rows[i] for i in order[:800]], [rows[i] for i in order[800:]]


_SVAMP_KEYS = ("ID", "Body", "Question", "Equation", "Answer", "Type")


def _convert_svamp(splits: Splits, out: Path) -> dict[str, int]:
    problems = [{key: row[key] for key in _SVAMP_KEYS} for row in splits["test"]]
    problems.sort(key=lambda p: int(p["ID"].rsplit("-", 1)[1]))  # SVAMP.json's order, whatever the upload's
    folder = out / "rationale" / "svamp"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "SVAMP.json").write_text(json.dumps(problems, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    train, test = svamp_split(problems)
    return {
        _rel(folder / "SVAMP.json", out): len(problems),
        _rel(folder / "svamp_train.json", out): _write_jsonl(folder / "svamp_train.json", train),
        _rel(folder / "svamp_test.json", out): _write_jsonl(folder / "svamp_test.json", test),
    }


_COT_NOTE = (
    "the PaLM chain-of-thought files `rationale/{task}/llm/<split>_CoT_<i>.json` are not on the Hub: they are only in "
    "google-research/distilling-step-by-step on GitHub (its datasets.zip); copy its `{task}/llm/` folder here by hand"
)


# ------------------------------------------------------------------------------------------------------ the table


def _parquet(config: str, **splits: str) -> dict[str, str]:
    """Input patterns in the Parquet export: split name -> ``<config>/<hub split>/*.parquet``."""
    return {ours: f"{config}/{hub}/*.parquet" for ours, hub in splits.items()}


_SOURCES = [
    HubSource(
        name="babylm",
        description="BabyLM 2023 strict-small corpus: 10M-word train, dev (the Baby Llama paper's corpus)",
        repo="cambridge-climb/BabyLM",
        revision="7bfe28cb2ce44bfbc13a7a7a0558975ea2da3984",  # the first upload of the BabyLM files, before cleaning
        builder="text",
        inputs={
            f"{s}_{split}": f"{folder}/{s}.txt"
            for s in BABYLM_SOURCES
            for split, folder in (("train", "10M"), ("dev", "dev"))
        },
        license="mixed, per source (BabyLM 2023 README): CHILDES, BNC, OpenSubtitles, Wikipedia, Gutenberg, ...",
        writes="corpus/<source>/{train,dev}.txt",
        convert=_convert_babylm,
        corpus_sources=BABYLM_SOURCES,
        notes=(
            "BabyLM's `10M/<source>.txt` -> `corpus/<source>/train.txt` and `dev/<source>.txt` -> "
            "`corpus/<source>/dev.txt`, lines unchanged; the folders keep BabyLM's source names (recipe "
            "`babyllama-babylm-cpu` reads them). None is the local stand-in mixture's `childes`, `brown`, ...: "
            "BabyLM's `aochildes` is another sample of the same AO-CHILDES corpus.",
        ),
    ),
    HubSource(
        name="blimp",
        description="BLiMP minimal pairs, 67 paradigms x 1,000",
        repo="nyu-mll/blimp",
        revision=PARQUET_EXPORT,
        builder="parquet",
        inputs={"train": "*/train/*.parquet"},
        license="CC BY 4.0",
        writes="blimp/<paradigm>.jsonl",
        convert=_convert_blimp,
        tasks=("blimp",),
    ),
    HubSource(
        name="arc_easy",
        description="ARC-Easy train, validation, test",
        repo="allenai/ai2_arc",
        revision=PARQUET_EXPORT,
        builder="parquet",
        inputs=_parquet("ARC-Easy", train="train", validation="validation", test="test"),
        license="CC BY-SA 4.0",
        writes="zero_shot/arc_easy/{train,validation,test}.jsonl",
        convert=_convert_arc_easy,
        tasks=("arc_easy", "arc_easy_validation"),
    ),
    HubSource(
        name="winogrande",
        description="WinoGrande dev (winogrande_xl validation) in partial-scoring form",
        repo="allenai/winogrande",
        revision=PARQUET_EXPORT,
        builder="parquet",
        inputs=_parquet("winogrande_xl", validation="validation"),
        license="CC BY (allenai/winogrande)",
        writes="zero_shot/winogrande/dev.jsonl",
        convert=_convert_winogrande,
        tasks=("winogrande",),
        notes=("each row split at its blank as lm-eval's preprocess_winogrande does (mosaicml's dev.jsonl form)",),
    ),
    HubSource(
        name="mmlu",
        description="MMLU dev and test, 57 subjects",
        repo="cais/mmlu",
        revision=PARQUET_EXPORT,
        builder="parquet",
        inputs=_parquet("all", dev="dev", test="test"),
        license="MIT",
        writes="zero_shot/mmlu/{dev,test}/<subject>_{dev,test}.csv",
        convert=_convert_mmlu,
        tasks=("mmlu",),
    ),
    HubSource(
        name="hellaswag",
        description="HellaSwag validation",
        repo="Rowan/hellaswag",
        revision=PARQUET_EXPORT,
        builder="parquet",
        inputs=_parquet("default", validation="validation"),
        license="MIT (rowanz/hellaswag)",
        writes="zero_shot/hellaswag/hellaswag_val.jsonl",
        convert=_convert_hellaswag,
        tasks=("hellaswag",),
    ),
    HubSource(
        name="cqa",
        description="CommonsenseQA with CoS-E explanations (cos_e v1.11), step-by-step's cqa task",
        repo="Salesforce/cos_e",
        revision=PARQUET_EXPORT,
        builder="parquet",
        inputs=_parquet("v1.11", train="train", validation="validation"),
        license="CommonsenseQA MIT; the Hub card says unknown for CoS-E",
        writes="rationale/cqa/cqa_{train,test}.json",
        convert=_step_by_step(
            "cqa",
            {"train": "train", "test": "validation"},
            ("id", "question", "choices", "answer", "abstractive_explanation", "extractive_explanation"),
        ),
        notes=(_COT_NOTE.format(task="cqa"),),
    ),
    HubSource(
        name="esnli",
        description="e-SNLI train, validation, test, step-by-step's esnli task",
        repo="esnli/esnli",
        revision=PARQUET_EXPORT,
        builder="parquet",
        inputs=_parquet("plain_text", train="train", validation="validation", test="test"),
        license="MIT",
        writes="rationale/esnli/esnli_{train,valid,test}.json",
        convert=_step_by_step(
            "esnli",
            {"train": "train", "valid": "validation", "test": "test"},
            ("premise", "hypothesis", "label", "explanation_1", "explanation_2", "explanation_3"),
        ),
        notes=(_COT_NOTE.format(task="esnli"),),
    ),
    HubSource(
        name="anli1",
        description="ANLI round 1 train, dev, test, step-by-step's anli1 task",
        repo="facebook/anli",
        revision=PARQUET_EXPORT,
        builder="parquet",
        inputs=_parquet("plain_text", train="train_r1", valid="dev_r1", test="test_r1"),
        license="CC BY-NC 4.0",
        writes="rationale/anli1/anli1_{train,valid,test}.json",
        convert=_step_by_step(
            "anli1",
            {"train": "train", "valid": "valid", "test": "test"},
            ("uid", "premise", "hypothesis", "label", "reason"),
        ),
        notes=(_COT_NOTE.format(task="anli1"),),
    ),
    HubSource(
        name="svamp",
        description="SVAMP's 1,000 problems and step-by-step's 800 / 200 split",
        repo="tongyx361/svamp",
        revision="main",
        builder="parquet",
        inputs={"test": "data/test-*.parquet"},
        license="MIT (arkilpatel/SVAMP)",
        writes="rationale/svamp/{SVAMP.json,svamp_train.json,svamp_test.json}",
        convert=_convert_svamp,
        notes=(
            "a community upload of SVAMP.json (ID, Body, Question, Equation, Answer, Type), sorted back by ID; the "
            "split is step-by-step's own (RandomState(0) permutation, first 800 train)",
            _COT_NOTE.format(task="svamp"),
        ),
    ),
]

SOURCES: dict[str, HubSource] = {s.name: s for s in _SOURCES}
"""Source name -> source, in fetch order."""

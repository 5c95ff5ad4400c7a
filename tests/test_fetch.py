"""``lmdistill data fetch`` on a local mirror: tiny files in the Hub's formats, at the Hub's paths.

The Hub is unreachable here, so every source is read from ``MIRROR/<repo>/<pattern>`` with the same ``datasets``
builder call the Hub path uses (only the URL differs); the files are written with ``datasets`` itself, features
included (ClassLabel answers, int32 pair ids, nested choices), as the Hub's Parquet export stores them. The rows are
made up here. What is checked: the converted root is read by the project's own readers, the manifest's checksums,
skip-on-rerun, that a failed conversion leaves nothing, that files no fetch wrote are left alone, and that the
command imports no torch.
"""

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from lmdistill.cli import main  # noqa: E402
from lmdistill.config import SourceConfig, load_recipe  # noqa: E402
from lmdistill.data.corpus import load_documents  # noqa: E402
from lmdistill.data.fetch import (  # noqa: E402
    MANIFEST,
    FetchError,
    default_fetch_root,
    fetch_data,
    needs_fetch,
    plan_sources,
    read_manifest,
    verify_source,
)
from lmdistill.data.fetch_sources import BABYLM_SOURCES, BLIMP_PARADIGMS, SOURCES, winogrande_partial  # noqa: E402
from lmdistill.evaluation.tasks import load_docs, mmlu_subjects  # noqa: E402

Features, Value, Sequence, ClassLabel = datasets.Features, datasets.Value, datasets.Sequence, datasets.ClassLabel

MMLU_SUBJECTS = ("anatomy", "college_physics")
NLI = ClassLabel(names=["entailment", "neutral", "contradiction"])


def _parquet(path: Path, rows: list[dict], features) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))


def _babylm(mirror: Path) -> None:
    repo = mirror / "cambridge-climb" / "BabyLM"
    for i, source in enumerate(BABYLM_SOURCES):
        for folder, split in (("10M", "train"), ("dev", "dev")):
            path = repo / folder / f"{source}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = [f"{source} {split} line {j} with some words ." for j in range(5)]
            path.write_text("\n".join(lines[:2] + [""] + lines[2:]) + ("\n" if i % 2 else ""), encoding="utf-8")


def _blimp(mirror: Path) -> None:
    features = Features(
        {
            "sentence_good": Value("string"),
            "sentence_bad": Value("string"),
            "field": Value("string"),
            "linguistics_term": Value("string"),
            "UID": Value("string"),
            "simple_LM_method": Value("bool"),
            "one_prefix_method": Value("bool"),
            "two_prefix_method": Value("bool"),
            "lexically_identical": Value("bool"),
            "pair_id": Value("int32"),
        }
    )
    for paradigm in BLIMP_PARADIGMS:
        rows = [
            {
                "sentence_good": f"The cats of {paradigm} sleep {k}.",
                "sentence_bad": f"The cats of {paradigm} sleeps {k}.",
                "field": "syntax/semantics" if paradigm == "principle_A_case_2" else "morphology",
                "linguistics_term": "agreement",
                "UID": paradigm,
                "simple_LM_method": True,
                "one_prefix_method": False,
                "two_prefix_method": False,
                "lexically_identical": False,
                "pair_id": k,
            }
            for k in range(2)
        ]
        _parquet(mirror / "nyu-mll" / "blimp" / paradigm / "train" / "0000.parquet", rows, features)


def _arc(mirror: Path) -> None:
    features = Features(
        {
            "id": Value("string"),
            "question": Value("string"),
            "choices": Sequence({"text": Value("string"), "label": Value("string")}),
            "answerKey": Value("string"),
        }
    )
    for split, n in (("train", 2), ("validation", 2), ("test", 3)):
        rows = [
            {
                "id": f"{split}-{k}",
                "question": f"Which one is number {k}?",
                "choices": {"text": [f"one {k}", f"two {k}", f"three {k}"], "label": ["A", "B", "C"]},
                "answerKey": "ABC"[k % 3],
            }
            for k in range(n)
        ]
        _parquet(mirror / "allenai" / "ai2_arc" / "ARC-Easy" / split / "0000.parquet", rows, features)


WINOGRANDE_ROWS = [
    {"sentence": "The trophy did not fit in the case because the _ was too big.", "option1": "trophy",
     "option2": "case", "answer": "1"},
    {"sentence": "Ann asked Mary for help since _ knew the way.", "option1": "Ann", "option2": "Mary", "answer": "2"},
    {"sentence": "_ is first: Tom or Sam?", "option1": "Tom", "option2": "Sam", "answer": "2"},
]  # fmt: skip


def _winogrande(mirror: Path, rows=WINOGRANDE_ROWS) -> None:
    features = Features({k: Value("string") for k in ("sentence", "option1", "option2", "answer")})
    _parquet(mirror / "allenai" / "winogrande" / "winogrande_xl" / "validation" / "0000.parquet", rows, features)


def _mmlu(mirror: Path, test_choices: int = 4) -> None:
    features = Features(
        {
            "question": Value("string"),
            "subject": Value("string"),
            "choices": Sequence(Value("string")),
            "answer": ClassLabel(names=["A", "B", "C", "D"]),
        }
    )
    for split, n, width in (("dev", 2, 4), ("test", 3, test_choices)):
        rows = [
            {
                "question": f'What is "{subject}", item {k}?\nThink, then answer',
                "subject": subject,
                "choices": [f"c{j}, really" for j in range(width)],
                "answer": k % 4,
            }
            for subject in MMLU_SUBJECTS
            for k in range(n)
        ]
        _parquet(mirror / "cais" / "mmlu" / "all" / split / "0000.parquet", rows, features)


def _hellaswag(mirror: Path) -> None:
    features = Features(
        {
            "ind": Value("int32"),
            "activity_label": Value("string"),
            "ctx_a": Value("string"),
            "ctx_b": Value("string"),
            "ctx": Value("string"),
            "endings": Sequence(Value("string")),
            "source_id": Value("string"),
            "split": Value("string"),
            "split_type": Value("string"),
            "label": Value("string"),
        }
    )
    rows = [
        {
            "ind": k,
            "activity_label": "Baking cookies",
            "ctx_a": "A man puts flour in a bowl.",
            "ctx_b": "he",
            "ctx": "A man puts flour in a bowl. he",
            "endings": ["stirs it.", "eats the bowl.", "flies away [title] now.", "sleeps."],
            "source_id": f"activitynet~v_{k}",
            "split": "val",
            "split_type": "indomain",
            "label": str(k % 4),
        }
        for k in range(3)
    ]
    _parquet(mirror / "Rowan" / "hellaswag" / "default" / "validation" / "0000.parquet", rows, features)


def _rationale(mirror: Path) -> None:
    cos_e = Features(
        {
            "id": Value("string"),
            "question": Value("string"),
            "choices": Sequence(Value("string")),
            "answer": Value("string"),
            "abstractive_explanation": Value("string"),
            "extractive_explanation": Value("string"),
        }
    )
    for split, n in (("train", 3), ("validation", 2)):
        rows = [
            {"id": f"{split}{k}", "question": f"Where is thing {k}?", "choices": ["a", "b", "c", "d", "e"],
             "answer": "c", "abstractive_explanation": "because c", "extractive_explanation": "thing"}
            for k in range(n)
        ]  # fmt: skip
        _parquet(mirror / "Salesforce" / "cos_e" / "v1.11" / split / "0000.parquet", rows, cos_e)
    esnli = Features(
        {"premise": Value("string"), "hypothesis": Value("string"), "label": NLI,
         **{f"explanation_{i}": Value("string") for i in (1, 2, 3)}}
    )  # fmt: skip
    for split in ("train", "validation", "test"):
        rows = [
            {"premise": f"A dog runs ({split} {k}).", "hypothesis": "An animal moves.", "label": k % 3,
             "explanation_1": "A dog is an animal.", "explanation_2": "", "explanation_3": ""}
            for k in range(3)
        ]  # fmt: skip
        _parquet(mirror / "esnli" / "esnli" / "plain_text" / split / "0000.parquet", rows, esnli)
    anli = Features(
        {"uid": Value("string"), "premise": Value("string"), "hypothesis": Value("string"), "label": NLI,
         "reason": Value("string")}
    )  # fmt: skip
    for split in ("train_r1", "dev_r1", "test_r1"):
        rows = [
            {"uid": f"{split}-{k}", "premise": "Paris is in France.", "hypothesis": "Paris is in Europe.",
             "label": k % 3, "reason": "France is in Europe."}
            for k in range(2)
        ]  # fmt: skip
        _parquet(mirror / "facebook" / "anli" / "plain_text" / split / "0000.parquet", rows, anli)
    svamp = Features(
        {"ID": Value("string"), "Body": Value("string"), "Question": Value("string"), "Equation": Value("string"),
         "Answer": Value("float64"), "Type": Value("string")}
    )  # fmt: skip
    rows = [
        {"ID": f"chal-{k}", "Body": f"Ann has {k} apples and gets 2 more.", "Question": "How many does she have?",
         "Equation": f"( {k}.0 + 2.0 )", "Answer": k + 2.0, "Type": "Addition"}
        for k in range(1, 1001)
    ]  # fmt: skip
    random.Random(0).shuffle(rows)  # an upload's order need not be SVAMP.json's
    _parquet(mirror / "tongyx361" / "svamp" / "data" / "test-00000-of-00001.parquet", rows, svamp)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """A local copy of the Hub repositories the sources read, with a few made-up rows each."""
    mirror = tmp_path_factory.mktemp("mirror")
    for write in (_babylm, _blimp, _arc, _winogrande, _mmlu, _hellaswag, _rationale):
        write(mirror)
    return mirror


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf-cache"))


@pytest.fixture(scope="module")
def fetched(tmp_path_factory, mirror, hf_cache) -> tuple[Path, list]:
    """A data root made by one fetch of every source from the mirror."""
    root = tmp_path_factory.mktemp("root")
    return root, fetch_data(root, mirror=mirror, cache_dir=hf_cache)


def test_every_source_is_fetched_and_read_by_the_project_readers(fetched, mirror):
    root, results = fetched
    assert [(r.name, r.status) for r in results] == [(name, "fetched") for name in SOURCES]
    # corpus: BabyLM's files, lines unchanged (a blank line separates documents)
    for source in BABYLM_SOURCES:
        for folder, split in (("10M", "train"), ("dev", "dev")):
            original = (mirror / "cambridge-climb" / "BabyLM" / folder / f"{source}.txt").read_text(encoding="utf-8")
            converted = (root / "corpus" / source / f"{split}.txt").read_text(encoding="utf-8")
            assert converted == original.rstrip("\n") + "\n"  # a last line without its newline gets one
    docs = load_documents(root, SourceConfig(name="wikipedia"), "train")
    assert len(docs) == 2 and docs[1].splitlines()[0] == "wikipedia train line 2 with some words ."
    # BLiMP: every paradigm, both sentences scored from an empty context, the grammatical one gold
    blimp = load_docs("blimp", root)
    assert len(blimp) == 2 * 67 and {d.gold for d in blimp} == {0}
    assert blimp[0].continuations == (" The cats of adjunct_island sleep 0.", " The cats of adjunct_island sleeps 0.")
    assert ("field", "syntax_semantics") in {g for d in blimp for g in d.groups}
    first = json.loads((root / "blimp" / "adjunct_island.jsonl").read_text(encoding="utf-8").splitlines()[1])
    assert first["pairID"] == "1" and first["UID"] == "adjunct_island"
    # ARC-Easy, both splits the tasks read
    arc = load_docs("arc_easy", root)
    assert len(arc) == 3 and arc[2].gold == 2 and arc[0].contexts[0] == "Question: Which one is number 0?\nAnswer:"
    assert arc[1].continuations == (" one 1", " two 1", " three 1")
    assert len(load_docs("arc_easy_validation", root)) == 2
    # WinoGrande in partial form: each option ends its context, the rest of the sentence is scored
    wino = load_docs("winogrande", root)
    assert [d.gold for d in wino] == [0, 1, 1]
    assert wino[0].contexts == ("The trophy did not fit in the case because the trophy", "The trophy did not fit in "
                                "the case because the case")  # fmt: skip
    assert wino[0].continuations == (" was too big.",) * 2 and wino[2].contexts == ("Tom", "Sam")
    # MMLU: one CSV per subject and split; quotes, commas and newlines survive the CSV
    assert mmlu_subjects(root) == sorted(MMLU_SUBJECTS)
    mmlu = load_docs("mmlu", root)
    assert len(mmlu) == 6 and [d.gold for d in mmlu[:3]] == [0, 1, 2]
    assert 'What is "anatomy", item 1?\nThink, then answer\nA. c0, really' in mmlu[1].contexts[0]
    assert (root / "zero_shot" / "mmlu" / "dev" / "anatomy_dev.csv").is_file()
    # HellaSwag: the official JSONL form, the label an int again
    hella = load_docs("hellaswag", root)
    assert [d.gold for d in hella] == [0, 1, 2]
    assert hella[0].contexts[0] == "Baking cookies: A man puts flour in a bowl. He"
    assert hella[0].continuations[2] == " flies away. now."
    # the recipe that reads this root finds everything it needs
    from lmdistill.methods.babyllama_recipe import validate_data

    assert validate_data(load_recipe("babyllama-babylm-cpu"), root) == []


def test_blimp_reader_and_rationale_files(fetched):
    from lmdistill.evaluation.blimp import load_blimp

    root, _ = fetched
    pairs = load_blimp(root)
    assert len(pairs) == 134 and pairs[0].pair_id == "0" and pairs[0].paradigm == "adjunct_island"

    def rows(rel):
        return [json.loads(line) for line in (root / "rationale" / rel).read_text(encoding="utf-8").splitlines()]

    assert [len(rows(f"cqa/cqa_{s}.json")) for s in ("train", "test")] == [3, 2]
    assert rows("cqa/cqa_train.json")[0] == {"id": "train0", "question": "Where is thing 0?", "choices": list("abcde"),
                                             "answer": "c", "abstractive_explanation": "because c",
                                             "extractive_explanation": "thing"}  # fmt: skip
    assert [r["label"] for r in rows("esnli/esnli_valid.json")] == [0, 1, 2]  # ClassLabel ints, as step-by-step's
    assert set(rows("anli1/anli1_test.json")[0]) == {"uid", "premise", "hypothesis", "label", "reason"}
    problems = json.loads((root / "rationale" / "svamp" / "SVAMP.json").read_text(encoding="utf-8"))
    assert [p["ID"] for p in problems] == [f"chal-{k}" for k in range(1, 1001)]  # sorted back into SVAMP.json order
    train, test = rows("svamp/svamp_train.json"), rows("svamp/svamp_test.json")
    assert (len(train), len(test)) == (800, 200)
    assert {r["input"] for r in train + test} == {f"{p['Body']}\n{p['Question']}" for p in problems}


def test_svamp_split_is_the_one_of_the_step_by_step_files(data_root, tmp_path):
    """From the local SVAMP.json (shuffled, as an upload may be), the converter writes step-by-step's own files."""
    folder = data_root / "rationale" / "svamp"
    if not (folder / "SVAMP.json").is_file():
        pytest.skip("no rationale/svamp under the data root")
    problems = json.loads((folder / "SVAMP.json").read_text(encoding="utf-8"))
    random.Random(1).shuffle(problems)
    written = SOURCES["svamp"].convert({"test": problems}, tmp_path)
    assert written["rationale/svamp/svamp_train.json"] == 800
    for name in ("svamp_train.json", "svamp_test.json"):
        ours = (tmp_path / "rationale" / "svamp" / name).read_text(encoding="utf-8").splitlines()
        theirs = (folder / name).read_text(encoding="utf-8").splitlines()
        assert [json.loads(x) for x in ours] == [json.loads(x) for x in theirs]
    ours = json.loads((tmp_path / "rationale" / "svamp" / "SVAMP.json").read_text(encoding="utf-8"))
    assert ours == json.loads((folder / "SVAMP.json").read_text(encoding="utf-8"))


def test_winogrande_partial_form_matches_lm_eval():
    """The reference: lm-evaluation-harness's own preprocess_winogrande (the file, not the package's imports)."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        pytest.skip("lm-eval is not installed")
    path = Path(spec.origin).parent / "tasks" / "winogrande" / "preprocess_winogrande.py"
    module_spec = importlib.util.spec_from_file_location("preprocess_winogrande", path)
    lm_eval_wino = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(lm_eval_wino)
    for row in WINOGRANDE_ROWS:
        ours = winogrande_partial(row)
        assert ours["context_options"] == lm_eval_wino.doc_to_choice(row)
        assert ours["continuation"] == lm_eval_wino.doc_to_target(row)
        assert ours["gold"] == lm_eval_wino.doc_to_text(row)
    with pytest.raises(ValueError, match="blank"):
        winogrande_partial({"sentence": "No blank here.", "option1": "a", "option2": "b", "answer": "1"})


def test_manifest_checksums_and_provenance(fetched):
    root, results = fetched
    manifest = read_manifest(root)
    assert list(manifest["sources"]) == list(SOURCES)
    for result in results:
        entry = manifest["sources"][result.name]
        assert entry["repo"] == SOURCES[result.name].repo and entry["revision"] == SOURCES[result.name].revision
        assert set(entry["files"]) == set(result.files) and verify_source(root, entry) == []
        for rel, info in entry["files"].items():
            data = (root / rel).read_bytes()
            assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["bytes"] == len(data)
            assert info["rows"] == result.files[rel]
    assert manifest["sources"]["blimp"]["files"]["blimp/passive_1.jsonl"]["rows"] == 2
    note = (root / "PROVENANCE.md").read_text(encoding="utf-8")
    for source in SOURCES.values():
        assert source.repo in note and source.license in note
    assert "refs/convert/parquet (local mirror)" in note and "7bfe28cb2ce44bfbc13a7a7a0558975ea2da3984" in note
    assert "train: `*/train/*.parquet`" in note and "UTC" in note
    assert "not on the Hub" in note  # the step-by-step rationales, a manual step
    assert not list(root.glob(".fetch-*")) and not list(root.rglob("*.tmp"))


def test_a_second_fetch_skips_what_is_there_and_redoes_what_changed(tmp_path, mirror, hf_cache):
    root = tmp_path / "root"
    first = fetch_data(root, only=["arc_easy", "winogrande"], mirror=mirror, cache_dir=hf_cache)
    assert [r.status for r in first] == ["fetched", "fetched"]
    # nothing is read again: an empty mirror would fail any load
    again = fetch_data(root, only=["arc_easy", "winogrande"], mirror=tmp_path / "empty", cache_dir=hf_cache)
    assert [r.status for r in again] == ["present", "present"] and again[0].files == first[0].files
    # a changed file makes its source fetched again, and only that one
    test_file = root / "zero_shot" / "arc_easy" / "test.jsonl"
    good = test_file.read_bytes()
    test_file.write_bytes(good.replace(b"one 0", b"eno 0"))
    assert verify_source(root, read_manifest(root)["sources"]["arc_easy"]) == [
        "zero_shot/arc_easy/test.jsonl: changed since it was fetched (SHA-256 differs)"
    ]
    third = fetch_data(root, only=["arc_easy", "winogrande"], mirror=mirror, cache_dir=hf_cache)
    assert [r.status for r in third] == ["fetched", "present"] and test_file.read_bytes() == good
    # a missing one too
    (root / "zero_shot" / "winogrande" / "dev.jsonl").unlink()
    assert [r.status for r in fetch_data(root, only=["winogrande"], mirror=mirror, cache_dir=hf_cache)] == ["fetched"]


def test_a_failed_conversion_leaves_nothing(tmp_path, mirror, hf_cache):
    """MMLU's dev files are converted, then a test row has 3 choices: no MMLU file, no temporary, no manifest entry."""
    import shutil

    bad = tmp_path / "bad-mirror"
    shutil.copytree(mirror / "cais", bad / "cais")
    shutil.copytree(mirror / "allenai", bad / "allenai")
    _mmlu(bad, test_choices=3)
    root = tmp_path / "root"
    results = fetch_data(root, only=["arc_easy", "mmlu"], mirror=bad, cache_dir=hf_cache)
    assert [r.status for r in results] == ["fetched", "failed"]
    assert "mmlu" in results[1].message and "4 choices" in results[1].message
    assert not (root / "zero_shot" / "mmlu").exists()
    assert not [p for p in root.rglob("*") if p.name.startswith(".fetch-") or p.name.endswith(".tmp")]
    assert list(read_manifest(root)["sources"]) == ["arc_easy"]  # the other source is kept
    # a source whose files cannot be read at all fails the same way, naming what it tried to read
    missing = fetch_data(root, only=["hellaswag"], mirror=tmp_path / "empty", cache_dir=hf_cache)[0]
    assert missing.status == "failed" and "default/validation/*.parquet" in missing.message
    assert not (root / "zero_shot" / "hellaswag").exists()


def test_a_fetch_killed_between_its_renames_is_completed_by_the_next(tmp_path, mirror, hf_cache, monkeypatch):
    import lmdistill.data.fetch as fetch

    real_replace, calls = fetch.os.replace, []

    def dying_replace(src, dst):  # patches os.replace everywhere: the manifest's atomic write renames too
        calls.extend([dst] if Path(dst).parent.name == "blimp" else [])
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a Ctrl-C between two renames
        real_replace(src, dst)

    root = tmp_path / "root"
    monkeypatch.setattr(fetch.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        fetch_data(root, only=["blimp"], mirror=mirror, cache_dir=hf_cache)
    monkeypatch.setattr(fetch.os, "replace", real_replace)
    assert len(list((root / "blimp").glob("*.jsonl"))) == 2  # two renames happened; no half-written file
    assert not list(root.glob(".fetch-*"))
    again = fetch_data(root, only=["blimp"], mirror=mirror, cache_dir=hf_cache)[0]
    assert again.status == "fetched" and len(list((root / "blimp").glob("*.jsonl"))) == 67
    assert verify_source(root, read_manifest(root)["sources"]["blimp"]) == []


def test_files_no_fetch_wrote_are_left_alone_unless_forced(tmp_path, mirror, hf_cache):
    root = tmp_path / "root"
    mine = root / "zero_shot" / "winogrande" / "dev.jsonl"
    mine.parent.mkdir(parents=True)
    mine.write_text('{"context_options": ["a", "b"], "continuation": "c", "gold": 0}\n', encoding="utf-8")
    result = fetch_data(root, only=["winogrande"], mirror=mirror, cache_dir=hf_cache)[0]
    assert result.status == "failed" and "not written by a fetch" in result.message and "--force" in result.message
    assert mine.read_text(encoding="utf-8").startswith('{"context_options": ["a", "b"]')
    forced = fetch_data(root, only=["winogrande"], mirror=mirror, cache_dir=hf_cache, force=True)[0]
    assert forced.status == "fetched" and len(load_docs("winogrande", root)) == 3
    # a PROVENANCE.md that no fetch wrote is kept; the fetch's note goes beside it
    other = tmp_path / "other"
    other.mkdir()
    (other / "PROVENANCE.md").write_text("# my data\n", encoding="utf-8")
    fetch_data(other, only=["winogrande"], mirror=mirror, cache_dir=hf_cache)
    assert (other / "PROVENANCE.md").read_text(encoding="utf-8") == "# my data\n"
    assert "allenai/winogrande" in (other / "PROVENANCE.fetch.md").read_text(encoding="utf-8")


def test_plan_sources_follows_the_recipes():
    sources, notes = plan_sources(["babyllama-cpu"])
    assert [s.name for s in sources] == ["blimp", "arc_easy", "winogrande", "mmlu"]
    assert len(notes) == 1 and "childes, brown" in notes[0] and "babyllama-babylm-cpu" in notes[0]
    sources, notes = plan_sources(["babyllama-babylm-cpu"], only=["hellaswag"])
    assert [s.name for s in sources] == ["babylm", "blimp", "arc_easy", "winogrande", "mmlu", "hellaswag"]
    assert notes == []
    assert [s.name for s in plan_sources()[0]] == list(SOURCES)
    with pytest.raises(KeyError, match="Did you mean: hellaswag"):
        plan_sources(only=["helaswag"])


def test_recipe_reads_exactly_the_babylm_sources():
    recipe = load_recipe("babyllama-babylm-cpu")
    assert tuple(s.name for s in recipe.data.sources) == BABYLM_SOURCES
    cpu = load_recipe("babyllama-cpu")
    assert sum(s.max_words for s in recipe.data.sources) == sum(s.max_words for s in cpu.data.sources)
    assert recipe.student == cpu.student and recipe.teachers == cpu.teachers


def test_needs_fetch_and_default_root(tmp_path, monkeypatch, request):
    assert needs_fetch(tmp_path / "missing")
    assert not needs_fetch(tmp_path)  # a root no fetch wrote: the demo runs on it as it is
    (tmp_path / MANIFEST).write_text('{"format": 1, "sources": {}}', encoding="utf-8")
    assert needs_fetch(tmp_path)  # a fetched root: fetching again completes it
    with monkeypatch.context() as env:
        env.setenv("LMDISTILL_DATA", str(tmp_path / "d"))
        assert default_fetch_root() == tmp_path / "d"
    data_root = request.getfixturevalue("data_root")  # skips here without the local data
    for folder in ("corpus", "blimp", "zero_shot"):  # ... unless it also holds what babyllama-cpu reads
        (tmp_path / folder).symlink_to(data_root / folder)
    assert not needs_fetch(tmp_path)


def test_another_fetch_in_the_same_root_is_refused(tmp_path, mirror):
    import lmdistill.data.fetch as fetch

    with fetch._root_lock(tmp_path), pytest.raises(FetchError, match="another `lmdistill data fetch`"):
        fetch_data(tmp_path, only=["winogrande"], mirror=mirror)


def test_cli_fetch_and_validate(tmp_path, mirror, hf_cache, capsys, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(hf_cache))  # not ~/.cache
    root = tmp_path / "root"
    argv = ["data", "fetch", "--root", str(root), "--mirror", str(mirror), "--recipe", "babyllama-babylm-cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "babylm      fetched   20 files" in out and "mmlu        fetched    4 files" in out
    assert main(argv) == 0 and "blimp       present   67 files" in capsys.readouterr().out
    assert main(["recipes", "validate", "babyllama-babylm-cpu", "--data-root", str(root)]) == 0
    assert main(["data", "fetch", "--root", str(root), "--only", "helaswag"]) == 2
    assert "Did you mean: hellaswag" in capsys.readouterr().err
    assert main(["data", "fetch", "--root", str(root), "--mirror", str(tmp_path), "--only", "svamp"]) == 1
    assert "1 of 1 sources failed (svamp)" in capsys.readouterr().err


@pytest.mark.parametrize("with_fetch", [False, True])
def test_data_fetch_imports_no_torch(tmp_path, mirror, with_fetch):
    argv = ["data", "fetch", "--help"]
    if with_fetch:
        argv = ["data", "fetch", "--root", str(tmp_path / "r"), "--mirror", str(mirror), "--only", "winogrande"]
    code = (
        f"import sys\nfrom lmdistill.cli import main\ntry:\n    rc = main({argv!r})\nexcept SystemExit as e:\n"
        "    rc = e.code\nprint(rc, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip().splitlines()[-1] == "0 False False"

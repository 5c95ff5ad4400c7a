"""Task files: the YAML format, its errors, registering a user's file, `lmdistill eval --task-file`, and parity.

The slow test at the end runs the README's worked example (CommonsenseQA from the data root) and checks that
our per-item log-likelihoods and accuracy equal lm-eval 0.4.13's for an lm-eval task YAML written for the same
local file.
"""

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from lmdistill.evaluation.blimp import load_blimp
from lmdistill.evaluation.readers import MalformedRowError
from lmdistill.evaluation.runner import evaluate_tasks
from lmdistill.evaluation.spec import Doc
from lmdistill.evaluation.taskfile import (
    TaskFileError,
    load_task_file,
    register_task_file,
    register_task_files,
    task_from_dict,
)
from lmdistill.evaluation.tasks import TASKS, get_task, load_docs

README = Path(__file__).resolve().parents[1] / "README.md"
PACKAGED = {"arc_easy", "arc_easy_validation", "blimp", "hellaswag", "mmlu", "winogrande"}


@pytest.fixture(autouse=True)
def _restore_registry(monkeypatch):
    """Tasks registered by a test are forgotten after it."""
    monkeypatch.setattr(TASKS, "_items", dict(TASKS._items))


def _piqa_rows():
    return [
        {"goal": "Keep bread fresh", "sol1": "Put it in a bag.", "sol2": "Leave it in the sun.", "label": 0},
        {"goal": "Open a jar", "sol1": "Tap the lid.", "sol2": "Run warm water over the lid.", "label": 1},
        {"goal": "Skip me", "sol1": "a", "sol2": "b", "label": -1},
        {"goal": "Dry shoes", "sol1": "Stuff them with newspaper.", "sol2": "Freeze them.", "label": 0},
    ]


PIQA = """
name: piqa_local
description: a PIQA-like task
data: {path: ./piqa.jsonl}
fields: {goal: str, sol1: str, sol2: str, label: int}
filter: label != -1
context: "Question: {{goal}}\\nAnswer:"
choices: ["{{sol1}}", "{{sol2}}"]
gold: label
metrics: [acc, acc_norm]
"""


@pytest.fixture
def piqa_file(tmp_path):
    (tmp_path / "piqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _piqa_rows()))
    path = tmp_path / "piqa.yaml"
    path.write_text(PIQA)
    return path


def _write(tmp_path, text, name="task.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------- packaged tasks


def test_packaged_tasks_are_task_files():
    for name in PACKAGED:
        spec = get_task(name)
        assert spec.definition is not None and spec.definition.packaged
        assert spec.origin == f"lmdistill/tasks/{name}.yaml"
    assert get_task("mmlu").group_keys == ("subject",) and get_task("blimp").group_keys == ("field", "paradigm")
    assert get_task("winogrande").definition.scoring == "partial"


def test_blimp_task_file_reads_as_load_blimp(data_root):
    docs = load_docs("blimp", data_root, limit=3)
    pairs = load_blimp(data_root, limit=3)
    assert docs == [
        Doc(("", ""), (" " + p.good, " " + p.bad), 0, (len(p.good), len(p.bad)),
            (("field", p.field), ("paradigm", p.paradigm)))
        for p in pairs
    ]  # fmt: skip
    assert {dict(d.groups)["field"] for d in docs} == {"morphology", "syntax", "semantics", "syntax_semantics"}
    spec = get_task("blimp").replace(subsets=("wh_island",), target_delimiter="")
    wh_island = next(p for p in pairs if p.paradigm == "wh_island")
    assert load_docs(spec, data_root, limit=1)[0].continuations == (wh_island.good, wh_island.bad)


# ------------------------------------------------------------------------------------------------ user files


def test_a_users_task_file(piqa_file):
    spec = load_task_file(piqa_file)
    assert spec.name == "piqa_local" and spec.metrics == ("acc", "acc_norm") and spec.origin == str(piqa_file)
    assert "piqa_local" not in TASKS  # loading does not register
    docs = load_docs(spec)  # ./piqa.jsonl is beside the task file: no data root needed
    assert len(docs) == 3  # the filter dropped the label -1 row
    assert docs[1] == Doc(
        contexts=("Question: Open a jar\nAnswer:",) * 2,
        continuations=(" Tap the lid.", " Run warm water over the lid."),
        gold=1,
        choice_lengths=(len("Tap the lid."), len("Run warm water over the lid.")),
    )
    assert len(load_docs(spec, limit=2)) == 2
    assert len(load_docs(task_from_dict({**yaml.safe_load(PIQA), "limit": 1}, base_dir=piqa_file.parent))) == 1


def test_register_is_idempotent_and_names_clash(piqa_file, tmp_path):
    spec = register_task_file(piqa_file)
    assert get_task("piqa_local") is spec and register_task_file(piqa_file) is spec
    other = tmp_path / "other"
    other.mkdir()
    (other / "piqa.yaml").write_text(PIQA)
    with pytest.raises(TaskFileError, match=r"other/piqa\.yaml: name: a task 'piqa_local' is registered already"):
        register_task_file(other / "piqa.yaml")
    with pytest.raises(TaskFileError, match="registered already \\(a packaged task\\)"):
        register_task_file(_write(tmp_path, PIQA.replace("piqa_local", "arc_easy"), "arc.yaml"))
    (other / "piqa.yaml").write_text(PIQA.replace("piqa_local", "piqa_two"))
    (other / "notes.txt").write_text("not a task")
    assert [s.name for s in register_task_files([other])] == ["piqa_two"]  # a folder: its *.yaml files
    with pytest.raises(FileNotFoundError, match="task file not found"):
        register_task_files([tmp_path / "nowhere.yaml"])


def test_per_file_subtasks_groups_and_csv(tmp_path):
    folder = tmp_path / "quiz"
    folder.mkdir()
    for topic in ("birds", "fish"):
        rows = "".join(f"What is {topic} {i}?,yes,no,{i % 2}\n" for i in range(4))
        (folder / f"{topic}.csv").write_text("q,a,b,answer\n" + rows)
    path = _write(
        tmp_path,
        """
name: quiz
data:
  path: quiz/{topic}.csv
  columns: [q, a, b, answer]
context: "{{ topic | upper }}: {{ q }}"
choices: ["{{ a }}", "{{ b }}"]
gold: {field: answer, labels: ["0", "1"]}
groups: {parity: "{{ 'odd' if answer == '1' else 'even' }}"}
""",
    )
    spec = load_task_file(path)
    docs = load_docs(spec, tmp_path, limit=3)
    assert [d.contexts[0] for d in docs[:2]] == ["BIRDS: What is birds 0?", "BIRDS: What is birds 1?"]
    assert [d.gold for d in docs] == [0, 1, 0] * 2 and spec.group_keys == ("parity", "topic")
    assert docs[4].groups == (("parity", "odd"), ("topic", "fish"))
    assert len(load_docs(spec.replace(subsets=("fish",)), tmp_path)) == 4
    with pytest.raises(KeyError, match="unknown topic 'fsh'. Did you mean: fish"):
        load_docs(spec.replace(subsets=("fsh",)), tmp_path)


def test_json_records_and_partial_scoring(tmp_path):
    data = {"items": [{"options": ["The cat", "The dog"], "rest": "barked.", "answer": "B"}]}
    (tmp_path / "wino.json").write_text(json.dumps(data))
    path = _write(
        tmp_path,
        """
name: wino_local
data: {path: wino.json, records: items}
scoring: partial
contexts: options
continuation: "{{ rest }}"
gold: {field: answer, labels: [A, B]}
metrics: [acc, acc_norm]
""",
    )
    (doc,) = load_docs(load_task_file(path), tmp_path)
    assert doc == Doc(("The cat", "The dog"), (" barked.", " barked."), 1, (7, 7))
    (tmp_path / "wino.json").write_text("".join(json.dumps(r) + "\n" for r in data["items"] * 2))
    with pytest.raises(MalformedRowError, match="looks like JSON lines: set data.format: jsonl"):
        load_docs(load_task_file(path), tmp_path)


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"choises": "x"}, "choises: unknown key. Did you mean: choices?"),
        ({"doc_to_text": "x"}, "doc_to_text: unknown key (it is lm-eval's name: in a task file it is context)"),
        ({"metrics": ["acc", "acc_nrm"]}, "metrics.1: unknown metric 'acc_nrm'. Did you mean: acc_norm"),
        ({"gold": {"field": "label", "lables": [0, 1]}}, "gold.lables: unknown key. Did you mean: labels?"),
        ({"context": "{{ goal"}, "context: not a valid template"),
        ({"choices": "{{sol1}}"}, "choices: a string is a field holding the list"),
        ({"scoring": "partial"}, "contexts: missing: scoring partial needs contexts, continuation, gold"),
        ({"continuation": "x"}, "continuation: not used with scoring multiple_choice"),
        ({"data": {"path": "x.txt"}}, "data.format: missing, and 'x.txt' has no known extension"),
        ({"data": {"path": "x.jsonl", "format": "jsonlines"}}, "data.format: unknown format 'jsonlines'"),
        ({"data": {"path": "a/{s}/x.jsonl"}}, "data.path: {s} must be in the file name"),
        ({"subsets": ["a"]}, "subsets: needs per-sub-task files"),
        ({"fields": {"goal": "string"}}, "fields.goal: unknown type 'string'. Did you mean: str?"),
        ({"name": "a,b"}, "name: must be letters, digits"),
        ({"filter": "label !="}, "filter: not a valid expression"),
        ({"limit": 0}, "limit: must be an integer >= 1"),
    ],
)
def test_bad_files_name_the_file_and_key(tmp_path, change, message):
    data = {**yaml.safe_load(PIQA), **change}
    path = _write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(TaskFileError) as err:
        load_task_file(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(TaskFileError, match=r"task\.yaml: not valid YAML"):
        load_task_file(_write(tmp_path, "name: [unclosed"))
    with pytest.raises(TaskFileError, match="a task file must be a mapping"):
        load_task_file(_write(tmp_path, "- a list"))
    with pytest.raises(FileNotFoundError, match="task file not found"):
        load_task_file(tmp_path / "none.yaml")


def test_bad_rows_name_file_and_line(piqa_file, tmp_path):
    data = piqa_file.parent / "piqa.jsonl"
    for key, value, message in [
        ("context", "{{ gaol }}", r"piqa\.jsonl:1: context: 'gaol' is undefined .*Did you mean: goal\?"),
        ("context", "{{ goal.__class__ }}", r"piqa\.jsonl:1: context: access to attribute '__class__'.* unsafe"),
        ("gold", {"field": "label", "labels": [5, 6]}, r"piqa\.jsonl:1: label must be 5 or 6, got 0"),
        ("choices", "sol1", r"piqa\.jsonl:1: sol1 must be a non-empty list of strings"),
    ]:
        spec = task_from_dict({**yaml.safe_load(PIQA), key: value}, str(piqa_file), base_dir=piqa_file.parent)
        with pytest.raises(MalformedRowError, match=message):
            load_docs(spec)
    data.write_text(data.read_text() + json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 2}) + "\n")
    with pytest.raises(MalformedRowError, match=r"piqa\.jsonl:5: label must index the 2 choices \(0 to 1\), got 2"):
        load_docs(load_task_file(piqa_file))
    data.write_text(json.dumps({"goal": "g", "sol1": "a", "label": 0}) + "\n")
    with pytest.raises(MalformedRowError, match=r"piqa\.jsonl:1: malformed row.*sol2 \(str\)"):
        load_docs(load_task_file(piqa_file))
    with pytest.raises(FileNotFoundError, match=r"task quiz: data file not found: .*quiz\.jsonl"):
        load_docs(task_from_dict({**yaml.safe_load(PIQA), "name": "quiz", "data": "quiz.jsonl"}), tmp_path)


def test_reserved_sections_are_checked_then_refused(tmp_path):
    generate = {
        "name": "cqa_rationale",
        "data": "rationale/cqa/cqa_test.json",
        "scoring": "generate_until",
        "context": "Q: {{ question }}\nA:",
        "generate_until": {"until": ["\n\n"], "max_gen_toks": 64},
        "answer_parser": {"regex": "So the answer is (.*)", "group": 1},
        "gold": "answer",
    }
    with pytest.raises(NotImplementedError, match="generate_until .* reserved for the rationale tasks"):
        load_task_file(_write(tmp_path, yaml.safe_dump(generate)))
    bad = {**generate, "answer_parser": {"regex": "(unclosed"}}
    with pytest.raises(TaskFileError, match="answer_parser.regex: not a valid regular expression"):
        load_task_file(_write(tmp_path, yaml.safe_dump(bad)))
    bad = {**generate, "generate_until": {"until": ["\n"], "max_tokens": 5}}
    with pytest.raises(TaskFileError, match="generate_until.max_tokens: unknown key"):
        load_task_file(_write(tmp_path, yaml.safe_dump(bad)))
    verbalizer = {**yaml.safe_load(PIQA), "verbalizer": {0: "yes", 1: "no"}}
    with pytest.raises(NotImplementedError, match="verbalizer: label verbalisers are reserved"):
        load_task_file(_write(tmp_path, yaml.safe_dump(verbalizer)))
    with pytest.raises(TaskFileError, match="verbalizer.0: must be a word or a list of words"):
        load_task_file(_write(tmp_path, yaml.safe_dump({**verbalizer, "verbalizer": {0: 3}})))


# ------------------------------------------------------------------------------------- lm-eval translation


def test_task_file_translates_to_lm_eval_templates(piqa_file, tmp_path, data_root):
    """The lm-eval config of a task file, rendered as lm-eval renders it, gives our requests (no lm-eval)."""
    import dataclasses

    from jinja2 import BaseLoader, Environment, StrictUndefined

    from lmdistill.evaluation.harness import harness_task_configs

    env = Environment(loader=BaseLoader, undefined=StrictUndefined, keep_trailing_newline=True)

    def render(template, doc):  # lm-eval's apply_template, and its digit / list literal rules
        if not isinstance(template, str):
            return template
        text = env.from_string(template).render(**doc)
        return ast.literal_eval(text) if text.isdigit() or text.startswith("[") else text

    packaged = [get_task("winogrande"), get_task("arc_easy"), get_task("blimp").replace(subsets=("wh_island",))]
    specs = [load_task_file(piqa_file)] + [  # the packaged ones translated as if they were a user's
        s.replace(definition=dataclasses.replace(s.definition, packaged=False)) for s in packaged
    ]
    for spec in specs:
        (name, config), *_ = harness_task_configs(spec, data_root, Path("unused"), tmp_path)
        copy = Path(config["dataset_kwargs"]["data_files"]["test"])
        rows = [json.loads(line) for line in copy.read_text().splitlines()]
        docs = load_docs(spec, data_root, limit=5)
        for row, doc in zip(rows[: len(docs)], docs, strict=True):
            choices = render(config["doc_to_choice"], row)
            if spec.definition.scoring == "partial":
                assert choices == list(doc.contexts) and render(config["doc_to_text"], row) == doc.gold
                assert " " + render(config["doc_to_target"], row) == doc.continuations[0]
            else:
                assert [" " + c for c in choices] == list(doc.continuations)
                assert render(config["doc_to_text"], row) == doc.contexts[0]
                assert render(config["doc_to_target"], row) == doc.gold
        assert name.startswith(f"lmdistill_{spec.name}") and config["metric_list"][0]["metric"] == "acc"
        if spec.name == "piqa_local":
            assert len(rows) == 3  # the filtered row is not copied


# ----------------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_llama, tiny_tokenizer):
    folder = tmp_path / "tiny"
    tiny_llama.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_cli_eval_task_file(piqa_file, tiny_model_dir, tmp_path, capsys):
    from lmdistill.cli import main

    assert main(["eval", "--task-file", str(piqa_file), "--list-tasks"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"piqa_local +acc, acc_norm +a PIQA-like task \[{re.escape(str(piqa_file))}\]", out)
    assert "arc_easy " in out and "[" not in out.split("piqa_local")[0]  # packaged tasks show no path
    args = ["eval", str(tiny_model_dir), "--task-file", str(piqa_file), "--output-dir", str(tmp_path / "o")]
    assert main(args) == 0  # --tasks defaults to the task files' tasks
    results = json.loads((tmp_path / "o" / "tiny" / "results.json").read_text())
    assert results["tasks"] == ["piqa_local"] and results["task_files"] == {"piqa_local": str(piqa_file)}
    assert results["results"]["piqa_local"]["num_items"] == 3 and "acc_norm" in results["results"]["piqa_local"]
    bad = _write(tmp_path, PIQA.replace("choices:", "choises:"), "bad.yaml")
    assert main(["eval", str(tiny_model_dir), "--task-file", str(bad)]) == 2
    assert f"{bad}: choises: unknown key. Did you mean: choices?" in capsys.readouterr().err
    reserved = _write(tmp_path, PIQA + 'verbalizer: {0: "yes", 1: "no"}\n', "reserved.yaml")
    assert main(["eval", "--task-file", str(reserved), "--list-tasks"]) == 2
    assert "not implemented" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ README worked example


def _readme_task_file(tmp_path):
    section = README.read_text(encoding="utf-8").split("### Adding an evaluation task", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return _write(tmp_path, block, "commonsense_qa.yaml")


def test_readme_example_reads_commonsense_qa(tmp_path, data_root):
    spec = load_task_file(_readme_task_file(tmp_path))
    docs = load_docs(spec, data_root)
    first = json.loads((data_root / "rationale/cqa/cqa_test.json").read_text().splitlines()[0])
    assert len(docs) == 1221 and docs[0].continuations == (" A", " B", " C", " D", " E")
    assert docs[0].contexts[0] == (
        f"Question: {first['question'].strip()}\n"
        + "".join(f"{letter}. {text}\n" for letter, text in zip("ABCDE", first["choices"], strict=True))
        + "Answer:"
    )
    assert docs[0].gold == first["choices"].index(first["answer"])


@pytest.mark.slow
def test_readme_example_reproduces_lm_eval(tmp_path, data_root, tiny_llama, tiny_tokenizer, monkeypatch):
    """The README's task file, run as the README says, equals lm-eval with a task YAML for the same file."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from lmdistill.cli import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir = tmp_path / "tiny"
    tiny_llama.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    limit = 40

    # lm-eval's own commonsense_qa prompt, its choices['text'][i] being the local file's choices[i]
    theirs_yaml = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/commonsense_qa/default.yaml").read_text())
    prompt = re.sub(r"choices\['text'\]\[(\d)\]", r"choices[\1]", theirs_yaml["doc_to_text"])
    include = tmp_path / "lm_eval_tasks"
    include.mkdir()
    lm_eval_task = {  # what a user of lm-eval writes for the local file
        "task": "cqa_local",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_root / "rationale/cqa/cqa_test.json")}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": prompt,
        "doc_to_choice": ["A", "B", "C", "D", "E"],
        "doc_to_target": "{{ choices.index(answer) }}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    (include / "cqa_local.yaml").write_text(yaml.safe_dump(lm_eval_task))
    out = lm_eval.simple_evaluate(
        model=HFLM(pretrained=str(model_dir), batch_size=8, device="cpu"),
        tasks=["cqa_local"],
        task_manager=TaskManager(include_path=str(include), include_defaults=False),
        limit=limit,
        num_fewshot=0,
        bootstrap_iters=0,
        log_samples=True,
    )
    samples = sorted(out["samples"]["cqa_local"], key=lambda s: s["doc_id"])
    assert len(samples) == limit

    task_file = _readme_task_file(tmp_path)
    spec = load_task_file(task_file)
    assert spec.definition.context.source.replace(" ", "") == prompt.replace(" ", "")  # lm-eval's prompt
    ours = evaluate_tasks(tiny_llama, tiny_tokenizer, [spec], data_root=data_root, limit=limit, samples=True)
    ours = ours["commonsense_qa"]
    for mine, theirs in zip(ours["samples"], samples, strict=True):
        assert mine["lls"] == pytest.approx([float(r[0]) for r in theirs["filtered_resps"]], abs=1e-4)
        assert mine["is_greedy"] == [bool(r[1]) for r in theirs["filtered_resps"]]
        assert mine["acc"] == float(theirs["acc"])
    assert ours["acc"] == pytest.approx(out["results"]["cqa_local"]["acc,none"], abs=1e-12)

    # the README's commands: our scorer, and the task file translated for lm-eval's backend
    for backend in ("lmdistill", "harness"):
        folder = tmp_path / backend
        args = ["eval", str(model_dir), "--task-file", str(task_file), "--tasks", "commonsense_qa"]
        args += ["--limit", str(limit), "--backend", backend, "--device", "cpu", "--output-dir", str(folder)]
        assert main([*args, "--data-root", str(data_root), "--batch-size", "8"]) == 0
        result = json.loads((folder / "tiny" / "results.json").read_text())["results"]["commonsense_qa"]
        assert result["num_items"] == limit and result["acc"] == ours["acc"]

"""Task loaders: lm-eval's prompts from the local files, --limit semantics, and errors that name file and line."""

import json

import pytest

from lmdistill.evaluation.metrics import aggregate, score_item
from lmdistill.evaluation.readers import MalformedRowError
from lmdistill.evaluation.tasks import TASKS, get_task, load_docs


def test_arc_easy_prompt_and_gold(data_root):
    docs = load_docs("arc_easy", data_root, limit=3)
    row = json.loads((data_root / "zero_shot/arc_easy/test.jsonl").read_text().splitlines()[0])
    first = docs[0]
    assert set(first.contexts) == {f"Question: {row['question']}\nAnswer:"}
    assert first.continuations == tuple(" " + t for t in row["choices"]["text"])
    assert first.gold == row["choices"]["label"].index(row["answerKey"])
    assert first.choice_lengths == tuple(len(t) for t in row["choices"]["text"])
    assert len(load_docs("arc_easy", data_root)) == 2376 and len(load_docs("arc_easy_validation", data_root)) == 570


def test_winogrande_partial_scoring(data_root):
    (doc,) = load_docs("winogrande", data_root, limit=1)
    assert doc.contexts == (
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    )
    assert doc.continuations == (" always got the easier cases.",) * 2 and doc.gold == 1


def test_mmlu_limit_is_per_subject_and_prompt_is_lm_evals_default(data_root):
    spec = get_task("mmlu").replace(subsets=("anatomy", "high_school_biology"))
    docs = load_docs(spec, data_root, limit=4)
    assert [dict(d.groups)["subject"] for d in docs] == ["anatomy"] * 4 + ["high_school_biology"] * 4
    context = docs[4].contexts[0]
    assert context.startswith(
        "The following are multiple choice questions (with answers) about high school biology.\n\n"
    )
    assert context.endswith("\nAnswer:") and "\nA. " in context and "\nD. " in context
    assert docs[0].continuations == (" A", " B", " C", " D")
    assert len(load_docs("mmlu", data_root, limit=1)) == 57
    with pytest.raises(KeyError, match="Did you mean: anatomy"):
        load_docs(get_task("mmlu").replace(subsets=("anatomyy",)), data_root)


def test_blimp_limit_is_per_paradigm(data_root):
    docs = load_docs("blimp", data_root, limit=2)
    assert len(docs) == 134
    assert docs[0].contexts == ("", "") and docs[0].continuations[0].startswith(" ") and docs[0].gold == 0


def test_hellaswag_official_jsonl(tmp_path):
    row = {
        "ind": 4,
        "activity_label": "Removing ice from car",
        "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter "
        "clothes smiles.",
        "ctx_b": "then",
        "split": "val",
        "label": 3,
        "endings": [", the man adds wax to the windshield [title] and cuts it.", ", a person board a ski lift.",
                    ", the man puts on a christmas coat.", ", the man continues removing the snow on his car."],
    }  # fmt: skip
    folder = tmp_path / "zero_shot" / "hellaswag"
    folder.mkdir(parents=True)
    (folder / "hellaswag_val.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({**row, "label": "0"}) + "\n")
    docs = load_docs("hellaswag", tmp_path)
    assert [d.gold for d in docs] == [3, 0]
    query = "Removing ice from car: Then, the man writes over the snow covering the window of a car, and a woman "
    assert docs[0].contexts[0] == query + "wearing winter clothes smiles. Then"
    assert docs[0].continuations[0] == " , the man adds wax to the windshield. and cuts it."  # [title] -> ". "
    assert docs[0].choice_lengths[1] == len(", a person board a ski lift.")
    assert get_task("hellaswag").metrics == ("acc", "acc_norm")
    (folder / "hellaswag_val.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({**row, "label": 9}) + "\n")
    with pytest.raises(MalformedRowError, match=r"hellaswag_val\.jsonl:2: label must index"):
        load_docs("hellaswag", tmp_path)


def test_unknown_task_lists_the_tasks():
    with pytest.raises(KeyError, match=r"Did you mean: winogrande\? Known: arc_easy, .*mmlu.*winogrande"):
        get_task("winogrand")
    assert {"blimp", "arc_easy", "winogrande", "mmlu", "hellaswag"} <= set(TASKS)


def test_missing_file_names_path_and_root(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_docs("arc_easy", tmp_path)
    assert str(tmp_path / "zero_shot/arc_easy/test.jsonl") in str(err.value) and f"data root {tmp_path}" in str(
        err.value
    )


def test_malformed_rows_name_file_and_line(tmp_path):
    wino = tmp_path / "zero_shot" / "winogrande"
    wino.mkdir(parents=True)
    good = {"context_options": ["a", "b"], "continuation": "c", "gold": 0}
    (wino / "dev.jsonl").write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "gold": "0"}) + "\n")
    with pytest.raises(MalformedRowError, match=r"dev\.jsonl:3: .*gold \(int\)"):
        load_docs("winogrande", tmp_path)
    mmlu = tmp_path / "zero_shot" / "mmlu" / "test"
    mmlu.mkdir(parents=True)
    header = "question,choice0,choice1,choice2,choice3,answer\n"
    (mmlu / "x_test.csv").write_text(header + 'q,"multi\nline",b,c,d,1\nq,a,b,c,d,7\n')
    with pytest.raises(MalformedRowError, match=r"x_test\.csv:4: answer must be 0, 1, 2 or 3"):
        load_docs("mmlu", tmp_path)
    (mmlu / "x_test.csv").write_text(header + "q,a,b,c,1\n")
    with pytest.raises(MalformedRowError, match=r"x_test\.csv:2: malformed row, 5 cells"):
        load_docs("mmlu", tmp_path)


def test_metrics_follow_lm_eval_argmax_and_length_normalisation(data_root):
    spec = get_task("arc_easy")
    doc = load_docs(spec, data_root, limit=1)[0].__class__(("c",) * 2, (" ab", " abcdef"), 1, (2, 6))
    # acc: -3 > -4 picks choice 0; acc_norm: -3/2 = -1.5 < -4/6 = -0.67 picks choice 1
    assert score_item(doc, [-3.0, -4.0], spec.metrics) == {"acc": 0.0, "acc_norm": 1.0}
    assert score_item(doc, [-3.0, -3.0], ("acc",)) == {"acc": 0.0}  # a tie goes to the first choice
    result = aggregate(spec, [doc, doc], [{"acc": 1.0, "acc_norm": 0.0}, {"acc": 0.0, "acc_norm": 0.0}])
    assert result["acc"] == 0.5 and result["acc_norm"] == 0.0 and result["num_items"] == 2 and result["chance"] == 0.5

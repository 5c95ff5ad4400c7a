import json
from collections import defaultdict

import pytest
import torch

from lmdistill.evaluation.blimp import MinimalPair, evaluate_blimp, list_paradigms, load_blimp
from lmdistill.evaluation.scoring import hf_logits_fn, score_texts

PARADIGMS = ["adjunct_island", "anaphor_gender_agreement", "principle_A_case_2", "only_npi_scope"]


def test_list_paradigms_discovers_all_files(data_root):
    names = list_paradigms(data_root)
    assert len(names) == 67
    assert names == sorted(names)
    assert {"adjunct_island", "wh_island", "principle_A_case_2"} <= set(names)


def test_load_blimp_limit_and_fields(data_root):
    pairs = load_blimp(data_root, PARADIGMS, limit=5)
    assert len(pairs) == 20
    assert [p.paradigm for p in pairs] == [name for name in PARADIGMS for _ in range(5)]
    first = pairs[0]
    assert first == MinimalPair(
        paradigm="adjunct_island",
        field="syntax",
        linguistics_term="island_effects",
        pair_id="0",
        good="Who should Derek hug after shocking Richard?",
        bad="Who should Derek hug Richard after shocking?",
    )
    # The release spells this one paradigm's field "syntax/semantics".
    assert {p.field for p in pairs if p.paradigm == "principle_A_case_2"} == {"syntax_semantics"}


def test_evaluate_blimp_agrees_with_pairwise_scores(data_root, tiny_llama, tiny_tokenizer):
    pairs = load_blimp(data_root, PARADIGMS, limit=5)
    fn = hf_logits_fn(tiny_llama)
    result = evaluate_blimp(fn, tiny_tokenizer, pairs, batch_size=7)

    # lm-eval >= 0.4 requests ("", " " + sentence): the target delimiter belongs to the scored continuation
    good = score_texts(fn, tiny_tokenizer, [" " + p.good for p in pairs], batch_size=64)
    bad = score_texts(fn, tiny_tokenizer, [" " + p.bad for p in pairs], batch_size=64)
    correct = [g > b for g, b in zip(good, bad, strict=True)]
    by_paradigm, by_field = defaultdict(list), defaultdict(list)
    for pair, ok in zip(pairs, correct, strict=True):
        by_paradigm[pair.paradigm].append(ok)
        by_field[pair.field].append(ok)

    assert result["num_pairs"] == 20
    assert result["overall"] == pytest.approx(sum(correct) / 20)
    assert result["per_paradigm"] == pytest.approx({k: sum(v) / len(v) for k, v in by_paradigm.items()})
    assert result["per_field"] == pytest.approx({k: sum(v) / len(v) for k, v in by_field.items()})
    assert set(result["per_field"]) == {"syntax", "morphology", "syntax_semantics"}
    assert result["per_field"]["syntax_semantics"] == pytest.approx(
        (sum(by_paradigm["principle_A_case_2"]) + sum(by_paradigm["only_npi_scope"])) / 10
    )
    assert result["macro_paradigm"] == pytest.approx(sum(result["per_paradigm"].values()) / 4)
    assert all(0.0 <= v <= 1.0 for v in result["per_paradigm"].values())


def test_a_model_that_prefers_one_sentence_scores_all_or_nothing(tiny_tokenizer):
    pair = MinimalPair("p", "syntax", "term", "0", good="The cat sat.", bad="The cats sat.")
    favourite = torch.tensor([tiny_tokenizer.bos_token_id, *tiny_tokenizer(pair.good).input_ids])
    vocab = len(tiny_tokenizer)

    def prefers_good(ids, mask):  # puts all its mass on the next token of the good sentence
        logits = torch.zeros(*ids.shape, vocab)
        for t in range(ids.shape[1]):
            if t + 1 < len(favourite):
                logits[:, t, favourite[t + 1]] = 20.0
        return logits

    other = MinimalPair("q", "morphology", "term", "0", good=pair.bad, bad=pair.good)
    result = evaluate_blimp(prefers_good, tiny_tokenizer, [pair, other])
    assert result["per_paradigm"] == {"p": 1.0, "q": 0.0}
    assert result["per_field"] == {"morphology": 0.0, "syntax": 1.0}
    assert result["overall"] == 0.5
    assert result["macro_paradigm"] == 0.5


def test_ties_go_to_the_good_sentence_as_in_lm_eval(tiny_tokenizer):
    pair = MinimalPair("p", "syntax", "term", "0", good="ab", bad="ba")
    assert len(tiny_tokenizer(pair.good).input_ids) == len(tiny_tokenizer(pair.bad).input_ids)
    uniform = lambda ids, mask: torch.zeros(*ids.shape, len(tiny_tokenizer))  # noqa: E731
    # lm-eval takes np.argmax over (good, bad): on a tie the first, the good sentence, is predicted
    assert evaluate_blimp(uniform, tiny_tokenizer, [pair])["overall"] == 1.0
    with pytest.raises(ValueError, match="at least one"):
        evaluate_blimp(uniform, tiny_tokenizer, [])


def test_unknown_paradigm_suggests_a_name(data_root):
    with pytest.raises(KeyError, match="Did you mean: adjunct_island"):
        load_blimp(data_root, ["adjunct_islnd"], limit=1)


def _write(root, name, lines):
    folder = root / "blimp"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_malformed_rows_name_file_and_line(tmp_path):
    row = {"sentence_good": "a", "sentence_bad": "b", "field": "syntax", "linguistics_term": "t", "pairID": "0"}
    _write(tmp_path, "ok", [json.dumps(row)] * 3)
    _write(tmp_path, "broken", [json.dumps(row), "", "{not json"])
    _write(tmp_path, "missing", [json.dumps({k: v for k, v in row.items() if k != "sentence_bad"})])
    assert list_paradigms(tmp_path) == ["broken", "missing", "ok"]
    assert len(load_blimp(tmp_path, ["ok"])) == 3
    assert len(load_blimp(tmp_path, ["broken"], limit=1)) == 1  # stops before the bad line
    with pytest.raises(ValueError, match=r"broken\.jsonl:3"):
        load_blimp(tmp_path, ["broken"])
    with pytest.raises(ValueError, match=r"missing\.jsonl:1.*sentence_bad"):
        load_blimp(tmp_path, ["missing"])
    with pytest.raises(ValueError, match="limit"):
        load_blimp(tmp_path, ["ok"], limit=-1)


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "blimp")):
        load_blimp(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_paradigms(tmp_path / "nowhere")


def test_empty_target_delimiter_scores_sentences_as_written(data_root, tiny_llama, tiny_tokenizer):
    pairs = load_blimp(data_root, PARADIGMS, limit=5)
    fn = hf_logits_fn(tiny_llama)
    good = score_texts(fn, tiny_tokenizer, [p.good for p in pairs])
    bad = score_texts(fn, tiny_tokenizer, [p.bad for p in pairs])
    as_written = evaluate_blimp(fn, tiny_tokenizer, pairs, target_delimiter="")
    assert as_written["overall"] == pytest.approx(sum(g > b for g, b in zip(good, bad, strict=True)) / len(pairs))
    spaced = score_texts(fn, tiny_tokenizer, [" " + pairs[0].good])
    assert spaced[0] != pytest.approx(good[0]), "the delimiter must change what is scored"

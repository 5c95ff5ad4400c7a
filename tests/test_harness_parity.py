"""Parity with lm-evaluation-harness 0.4.13: per-item log-likelihoods to 1e-4 and identical accuracies.

lm-eval's own HF backend loads a tiny LLaMA from a local folder, and its own task YAMLs (included from its
package, pointed at the local data files) build the requests; our scorer runs the same items. The packaged task
files, translated for lm-eval as a user's task file is, must score as lm-eval's own task YAMLs do.
"""

import dataclasses
import json

import pytest

pytest.importorskip("lm_eval")

from lmdistill.evaluation.harness import evaluate_with_harness  # noqa: E402
from lmdistill.evaluation.runner import evaluate_tasks  # noqa: E402
from lmdistill.evaluation.tasks import get_task  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def _as_users(spec):
    """A packaged task as if it were a user's task file: the harness backend translates it instead of using
    lm-eval's own task YAML."""
    return spec.replace(definition=dataclasses.replace(spec.definition, packaged=False))


def _compare(ours, theirs, spec):
    assert ours["num_items"] == theirs["num_items"] > 0
    for mine, harness in zip(ours["samples"], theirs["samples"], strict=True):
        assert mine["lls"] == pytest.approx(harness["lls"], abs=1e-4)
        assert mine["is_greedy"] == harness["is_greedy"]
        for metric in spec.metrics:
            assert mine[metric] == harness[metric]
    for metric in spec.metrics:
        assert ours[metric] == theirs[metric]
    assert ours.get("groups") == theirs.get("groups")


def test_our_scores_equal_lm_evals(model_dir, data_root):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    specs = [
        get_task("blimp").replace(subsets=("adjunct_island", "principle_A_case_2", "wh_island")),
        get_task("arc_easy"),
        get_task("winogrande"),
        get_task("mmlu").replace(subsets=("anatomy", "high_school_european_history", "formal_logic")),
    ]
    theirs = evaluate_with_harness(model_dir, specs, data_root=data_root, limit=25, batch_size=16, samples=True)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    ours = evaluate_tasks(model, tokenizer, specs, data_root=data_root, limit=25, batch_size=16, samples=True)
    for spec in specs:
        _compare(ours[spec.name], theirs[spec.name], spec)
    assert ours["blimp"]["num_items"] == 75 and ours["mmlu"]["num_items"] == 75


def test_hellaswag_loader_equals_lm_evals_preprocessing(model_dir, tmp_path):
    rows = [
        {
            "ind": i,
            "activity_label": "Removing ice from car",
            "ctx_a": "Then, the man writes over the snow [step] on it.",
            "ctx_b": "then" if i else "",
            "split": "val",
            "split_type": "indomain",
            "label": i % 4,
            "source_id": "x",
            "endings": [
                ", the man adds wax [title] to it.",
                ", a person board a ski lift.",
                " [header] stops.",
                ", the man continues removing the snow on his car.",
            ],
        }
        for i in range(6)
    ]
    folder = tmp_path / "zero_shot" / "hellaswag"
    folder.mkdir(parents=True)
    (folder / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = get_task("hellaswag")
    theirs = evaluate_with_harness(model_dir, [spec], data_root=tmp_path, batch_size=8, samples=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    ours = evaluate_tasks(model, tokenizer, [spec], data_root=tmp_path, samples=True)
    _compare(ours["hellaswag"], theirs["hellaswag"], spec)
    # the task file's Jinja2 cleaning, rendered by lm-eval, equals lm-eval's Python preprocessing
    translated = evaluate_with_harness(model_dir, [_as_users(spec)], data_root=tmp_path, batch_size=8, samples=True)
    _compare(translated["hellaswag"], theirs["hellaswag"], spec)


def test_packaged_task_files_translated_for_lm_eval_score_as_its_own_tasks(model_dir, data_root):
    """Each packaged task file, handed to lm-eval as a user's task file is (its templates rendered by lm-eval),
    scores item for item as lm-eval's own task YAML does (HellaSwag: in the test above)."""
    specs = [
        get_task("blimp").replace(subsets=("adjunct_island", "principle_A_case_2")),
        get_task("arc_easy"),
        get_task("arc_easy_validation"),
        get_task("winogrande"),
        get_task("mmlu").replace(subsets=("anatomy", "formal_logic")),
    ]
    own = evaluate_with_harness(model_dir, specs, data_root=data_root, limit=6, batch_size=16, samples=True)
    translated = evaluate_with_harness(
        model_dir, [_as_users(s) for s in specs], data_root=data_root, limit=6, batch_size=16, samples=True
    )
    for spec in specs:
        _compare(translated[spec.name], own[spec.name], spec)

import dataclasses

import pytest
import yaml

from lmdistill.config import (
    ConfigError,
    RecipeConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    list_recipes,
    load_recipe,
    to_dict,
    to_yaml,
)

PACKAGED = ["babyllama", "babyllama-cpu", "babyllama-smoke"]


def test_packaged_recipes_are_listed():
    assert set(PACKAGED) <= set(list_recipes())


@pytest.mark.parametrize("name", PACKAGED)
def test_every_packaged_recipe_validates_and_round_trips(name):
    recipe = load_recipe(name)
    again = from_dict(RecipeConfig, yaml.safe_load(to_yaml(recipe)))
    assert again == recipe


def test_paper_recipe_has_the_paper_sizes():
    r = load_recipe("babyllama")
    gpt2, llama = r.teachers.members
    assert (gpt2.model.arch, gpt2.model.num_layers, gpt2.model.num_heads, gpt2.model.hidden_size) == (
        "gpt2",
        24,
        16,
        1536,
    )
    assert gpt2.model.intermediate_size == 6144
    assert (gpt2.train.epochs, gpt2.train.batch_size, gpt2.train.lr) == (6, 256, 2.5e-4)
    assert (llama.model.num_layers, llama.model.num_heads, llama.model.hidden_size, llama.model.intermediate_size) == (
        24,
        8,
        1024,
        3072,
    )
    assert (llama.train.epochs, llama.train.batch_size, llama.train.lr) == (4, 128, 3e-4)
    s = r.student
    assert (s.model.num_layers, s.model.num_heads, s.model.hidden_size, s.model.intermediate_size) == (
        16,
        8,
        512,
        1024,
    )
    assert (s.train.epochs, s.train.batch_size, s.train.lr, s.train.warmup_steps) == (6, 32, 3e-4, 200)
    assert (r.distillation.temperature, r.distillation.alpha) == (2.0, 0.5)
    assert (r.tokenizer.vocab_size, r.data.block_size) == (16000, 128)


def test_cpu_recipe_keeps_the_paper_ratios():
    r = load_recipe("babyllama-cpu")
    assert (r.distillation.temperature, r.distillation.alpha) == (2.0, 0.5)
    assert all(t.train.epochs >= 2 for t in r.teachers.members) and r.student.train.epochs >= 2
    assert r.data.block_size == 128


def test_overrides_apply_to_nested_keys_and_list_items():
    r = load_recipe(
        "babyllama-smoke",
        ["teachers.members.1.train.lr=1e-4", "distillation.reduction=batchmean", "evaluation.limit=null"],
    )
    assert r.teachers.members[1].train.lr == 1e-4
    assert r.distillation.reduction == "batchmean"
    assert r.evaluation.limit is None


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"distillation\.temprature: unknown key\. Did you mean: temperature"):
        load_recipe("babyllama-smoke", ["distillation.temprature=3"])


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("distillation.alpha=1.5", r"distillation\.alpha: must be in \[0, 1\]"),
        ("distillation.temperature=0", r"distillation\.temperature: must be > 0"),
        ("student.train.batch_size=0", r"student\.train\.batch_size: must be >= 1"),
        ("student.model.hidden_size=31", r"student\.model\.hidden_size: must be divisible by num_heads"),
        ("student.model.arch=rnn", r"student\.model\.arch: must be one of"),
        ("student.model.arch=bert", r"student\.model\.family: Baby Llama distils causal LMs"),
        ("teachers.members.0.train.epochs=two", r"teachers\.members\.0\.train\.epochs: expected an integer"),
        ("teachers.members.5.train.lr=1", r"teachers\.members\.5: no list item 5"),
        ("distillation.ensemble=median", r"distillation\.ensemble: must be one of"),
        ("student.train.mixed_precision=bf16", r"mixed_precision: every train section .*'student.train': 'bf16'"),
        ("loss.compile=true", r"loss\.compile: applies to implementation chunked or fused, not plain"),
    ],
)
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe("babyllama-smoke", [override])


def test_loss_compile_is_read_with_the_chunked_and_fused_paths():
    for impl in ("chunked", "fused"):
        recipe = load_recipe("babyllama-smoke", [f"loss.implementation={impl}", "loss.compile=true"])
        assert recipe.loss.compile is True and recipe.loss.implementation == impl
    assert load_recipe("babyllama-smoke").loss.compile is False


def test_missing_required_key_is_named(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: x\ndata: {sources: [{name: brown}]}\ntokenizer: {}\nteachers: [{name: t, model: {path: t}}]\n"
    )
    with pytest.raises(ConfigError, match=r"r\.yaml: student: missing required key"):
        load_recipe(str(path))
    path.write_text("name: x\ndata: {sources: [{name: brown}]}\ntokenizer: {}\nteachers: []\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: teachers\.members: must list at least one teacher"):
        load_recipe(str(path))


def test_teachers_list_shorthand_and_cache_switch():
    plain = load_recipe("babyllama-smoke")
    assert plain.teachers.cache is False and plain.teachers.cache_top_k == 64
    cached = load_recipe("babyllama-smoke", ["teachers.cache=true", "teachers.cache_top_k=32"])
    assert cached.teachers.cache and cached.teachers.cache_top_k == 32
    data = to_dict(plain)
    data["teachers"] = data["teachers"]["members"]  # the list shorthand means {members: [...]}
    assert from_dict(RecipeConfig, data) == plain
    assert from_dict(RecipeConfig, yaml.safe_load(to_yaml(cached))) == cached


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["data.random_offset=true"], r"teachers\.cache: needs data\.random_offset: false"),
        (["distillation.features=[{kind: hint}]"], r"teachers\.cache: cannot serve feature terms"),
        (["teachers.cache_top_k=0"], r"teachers\.cache_top_k: must be >= 1"),
        (["teachers.cache_dtype=int8"], r"teachers\.cache_dtype: must be one of"),
    ],
)
def test_cache_settings_are_checked(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe("babyllama-smoke", ["teachers.cache=true", *overrides])


def test_unknown_recipe_name_suggests():
    with pytest.raises(FileNotFoundError, match=r"Did you mean: babyllama-cpu"):
        load_recipe("babyllama-cpy")


def test_malformed_override():
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        apply_overrides({}, ["student.train.lr"])


def test_train_config_checks_accumulation():
    with pytest.raises(ConfigError, match="divisible by grad_accum_steps"):
        TrainConfig(batch_size=10, grad_accum_steps=3)
    assert dataclasses.replace(TrainConfig(), batch_size=12, grad_accum_steps=3).grad_accum_steps == 3


def test_paper_recipe_builds_the_paper_parameter_counts():
    """GPT-2 705M (tied embeddings), LLaMA 360M and the 58M student, at vocabulary 16,000 (no weights allocated)."""
    import torch

    from lmdistill.models import build_model, count_parameters

    r = load_recipe("babyllama")
    expected = {"gpt2-teacher": 705e6, "llama-teacher": 360e6, "student": 58e6}
    for name, model_cfg in [(t.name, t.model) for t in r.teachers.members] + [("student", r.student.model)]:
        with torch.device("meta"):
            model = build_model(
                model_cfg,
                vocab_size=r.tokenizer.vocab_size,
                block_size=r.data.block_size,
                bos_id=1,
                eos_id=2,
                pad_id=0,
            )
        assert count_parameters(model) == pytest.approx(expected[name], rel=0.01), name


def test_config_lists_every_divergence_of_the_registry():
    from lmdistill.config import DIVERGENCE_NAMES
    from lmdistill.losses.divergences import DIVERGENCES

    assert set(DIVERGENCE_NAMES) == set(DIVERGENCES)


def test_preset_fills_keys_and_recipe_keys_win():
    r = load_recipe("babyllama-smoke", ["distillation.preset=gkd", "distillation.beta=0.2"])
    d = r.distillation  # the smoke recipe sets alpha 0.5 and T 2 itself: those win over the preset's 0 and 1
    assert (d.divergence, d.t2_scaling, d.reduction, d.beta) == ("generalized_jsd", False, "mean", 0.2)
    assert (d.alpha, d.temperature) == (0.5, 2.0)
    r = load_recipe("babyllama-smoke", ["distillation={preset: gkd}"])
    assert (r.distillation.alpha, r.distillation.temperature, r.distillation.beta) == (0.0, 1.0, 0.5)


def test_feature_layers_accept_a_name_or_a_list_and_check_the_teacher_index():
    r = load_recipe("babyllama-smoke", ["distillation.features=[{kind: hint, layers: [2, 4]}, {kind: attention}]"])
    assert r.distillation.features[0].layers == [2, 4] and r.distillation.features[1].layers == "uniform"
    with pytest.raises(ConfigError, match=r"features\.0\.layers"):
        load_recipe("babyllama-smoke", ["distillation.features=[{kind: hint, layers: sideways}]"])
    with pytest.raises(ConfigError, match=r"distillation\.features\.0\.teacher"):
        load_recipe("babyllama-smoke", ["distillation.features=[{kind: hint, teacher: 7}]"])
    with pytest.raises(ConfigError, match="attention loss must be one of"):
        load_recipe("babyllama-smoke", ["distillation.features=[{kind: attention, loss: cosine}]"])


def test_a_recipe_names_task_files_relative_to_itself(tmp_path, monkeypatch):
    import yaml

    from lmdistill.config import recipe_path
    from lmdistill.evaluation.tasks import TASKS

    monkeypatch.setattr(TASKS, "_items", dict(TASKS._items))  # the registration ends with this test

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "cqa_tiny.yaml").write_text(
        "name: cqa_tiny\n"
        "data: {path: rationale/cqa/cqa_test.json, format: jsonl}\n"
        "context: 'Question: {{ question }}\\nAnswer:'\n"
        "choices: {field: choices, template: '{{ choice }}'}\n"
        "gold: {field: answer, labels: choices}\n"
        "metrics: [acc]\n"
    )
    data = yaml.safe_load(recipe_path("babyllama-smoke").read_text())
    data["evaluation"] = {"tasks": ["cqa_tiny", "blimp"], "task_files": ["tasks/cqa_tiny.yaml"]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir("/")  # the path is the recipe file's, not the working folder's
    recipe = load_recipe(str(tmp_path / "r.yaml"))
    assert recipe.evaluation.task_files == [str(tmp_path / "tasks" / "cqa_tiny.yaml")]
    assert "cqa_tiny" in TASKS
    with pytest.raises(ConfigError, match=r"evaluation\.task_files\.0: .*no_such\.yaml"):
        load_recipe(str(tmp_path / "r.yaml"), [f"evaluation.task_files=[{tmp_path}/no_such.yaml]"])


def test_the_babylm_2023_scoring_mode_scores_after_eos():
    from lmdistill.config import EvaluationConfig

    assert EvaluationConfig().prefix == "bos"  # lm-eval 0.4.13, and <s> starts every training document
    assert EvaluationConfig(blimp_target_delimiter="").prefix == "eos"  # lm-eval 0.3 / BabyLM 2023
    assert EvaluationConfig(blimp_target_delimiter="", empty_context_prefix="bos").prefix == "bos"

"""The stlm method: vocabulary adaptation (FVT against a hand computation, frozen body), the adapted checkpoint,
the truncated feature teacher, the report's paired statistics, the recipes, and the smoke run with resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lmdistill.config import load_recipe
from lmdistill.config.schema import ConfigError
from lmdistill.models.adapt import adapt_vocabulary, freeze_body, subword_mapping, trainable_parameters
from lmdistill.teachers.partial import truncated_teacher


def _bpe(vocab: dict[str, int], merges: list[tuple[str, str]], **special: str) -> PreTrainedTokenizerFast:
    """A character-level BPE tokenizer with exactly this vocabulary and these merges (no pre-tokenizer)."""
    from tokenizers import Tokenizer, models

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab, merges, unk_token="<unk>")), **special)


OLD = _bpe(
    {"<s>": 0, "</s>": 1, "<unk>": 2, "a": 3, "b": 4, "c": 5, "ab": 6},
    [("a", "b")],
    bos_token="<s>",
    eos_token="</s>",
    unk_token="<unk>",
)
NEW = _bpe(
    {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "c": 4, "b": 5, "a": 6, "ab": 7, "bc": 8, "abc": 9},
    [("a", "b"), ("b", "c"), ("ab", "c")],
    pad_token="<pad>",
    bos_token="<s>",
    eos_token="</s>",
    unk_token="<unk>",
)


def _llama(vocab: int, tied: bool, layers: int = 3, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        bos_token_id=0,
        eos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


# ------------------------------------------------------------------------------------------------ initialisation


def test_fvt_rows_match_a_hand_computation():
    """New row = old row of the same token, else the mean of the old pieces' rows; specials by role."""
    model = _llama(len(OLD), tied=False)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    adapt_vocabulary(model, OLD, NEW, "mean_of_subwords")
    # by hand: <pad> -> old eos (no pad), <s> -> 0, </s> -> 1, <unk> -> 2; c, b, a, ab copied;
    # "bc" -> old pieces b, c; "abc" -> old pieces ab, c
    expected_pieces = [[1], [0], [1], [2], [5], [4], [3], [6], [4, 5], [6, 5]]
    for old, new in ((old_in, model.get_input_embeddings().weight), (old_out, model.get_output_embeddings().weight)):
        expected = torch.stack([old[p].mean(0) for p in expected_pieces])
        torch.testing.assert_close(new.detach(), expected, rtol=0, atol=0)
    assert model.config.vocab_size == len(NEW) == 10
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 0)
    rows = subword_mapping(NEW, OLD)
    assert rows.summary() == {"exact": 4, "special": 4, "averaged": 2, "unmapped": 0}


def test_explicit_special_tokens_and_their_errors():
    rows = subword_mapping(NEW, OLD, {"<s>": "</s>", "<pad>": "<unk>"})
    assert rows.pieces[1] == [1] and rows.pieces[0] == [2]
    with pytest.raises(ValueError, match=r"'<bos>' is not a token of the new \(student\) tokenizer"):
        subword_mapping(NEW, OLD, {"<bos>": "<s>"})
    with pytest.raises(ValueError, match=r"'<\|endoftext\|>' \(for '<s>'\) is not a token of the teacher"):
        subword_mapping(NEW, OLD, {"<s>": "<|endoftext|>"})


def test_random_init_is_seeded_at_the_old_scale_and_a_tied_model_stays_tied():
    a, b = _llama(len(OLD), tied=True), _llama(len(OLD), tied=True)
    std = a.get_input_embeddings().weight.std().item()
    adapt_vocabulary(a, OLD, NEW, "random", seed=3)
    adapt_vocabulary(b, OLD, NEW, "random", seed=3)
    assert torch.equal(a.get_input_embeddings().weight, b.get_input_embeddings().weight)
    assert a.get_output_embeddings().weight is a.get_input_embeddings().weight
    assert a.get_input_embeddings().weight.shape == (len(NEW), 16)
    assert 0.3 * std < a.get_input_embeddings().weight.std().item() < 3 * std
    with pytest.raises(ValueError, match="init must be one of"):
        adapt_vocabulary(a, OLD, NEW, "zeros")


# ------------------------------------------------------------------------------------------------ adaptation stage


def _corpus_data(tokenizer, num_blocks: int = 24, block: int = 16):
    from lmdistill.data.blocks import BlockDataset
    from lmdistill.data.tokenizer import tokenizer_fingerprint
    from lmdistill.methods.stages import CorpusData

    ids = tokenizer.encode("the cat sat on the mat, and the dog sat on the log. " * 60)  # learnable text
    tokens = torch.tensor(ids[: num_blocks * block])
    train = BlockDataset(tokens.numpy(), block, seed=0, random_offset=False, split="train", sources=["x"])
    dev = tokens[: 4 * block].view(4, block)
    info = {"tokenizer_sha256": tokenizer_fingerprint(tokenizer)}
    return CorpusData(tokenizer, train, dev, info)


@pytest.mark.parametrize("tied", [True, False])
def test_adaptation_trains_only_the_new_parts_and_saves_a_plain_checkpoint(tmp_path, tiny_tokenizer, tied):
    from lmdistill.config.sections import ModelConfig, TrainConfig
    from lmdistill.methods.adaptation import AdaptationConfig, adapt_teacher_stage

    teacher_dir = tmp_path / "teacher"
    teacher = _llama(len(OLD), tied=tied)
    teacher.save_pretrained(teacher_dir)
    OLD.save_pretrained(teacher_dir)
    body_before = {
        k: v.clone() for k, v in teacher.state_dict().items() if "embed_tokens" not in k and "lm_head" not in k
    }
    cfg = AdaptationConfig(
        model=ModelConfig(path=str(teacher_dir)),
        train=TrainConfig(epochs=1, batch_size=4, lr=1e-2, warmup_steps=1, eval_every_steps=2),
        inits=["mean_of_subwords"],
    )
    data = _corpus_data(tiny_tokenizer)
    out = adapt_teacher_stage(cfg, "mean_of_subwords", data, 0, tmp_path / "run", resume=False)
    final = tmp_path / "run" / "models" / "teacher-mean_of_subwords" / "final"
    # an ordinary checkpoint: plain transformers loads it, with the run's tokenizer beside it
    plain = AutoModelForCausalLM.from_pretrained(final).eval()
    tok = AutoTokenizer.from_pretrained(final)
    assert len(tok) == len(tiny_tokenizer) == plain.config.vocab_size
    assert plain.get_input_embeddings().weight.shape[0] == len(tiny_tokenizer)
    assert (plain.get_output_embeddings().weight is plain.get_input_embeddings().weight) == tied
    state = plain.state_dict()
    for key, value in body_before.items():
        assert torch.equal(state[key], value), f"{key} changed: the body must stay frozen"
    ids = torch.tensor([tok.encode("the cat")])
    torch.testing.assert_close(plain(ids).logits, out["model"](ids).logits)
    entry = out["entry"]
    assert entry["adaptation"]["trained_parameters"] == (1 if tied else 2) * len(tiny_tokenizer) * 16
    curve = entry["curve"]
    assert [p["step"] for p in curve] == [0, 2, 4, 6]  # 6 steps: before training, every 2, the epoch's end
    assert curve[0]["tokens"] == 0 and curve[1]["tokens"] == 2 * 4 * 16
    assert curve[-1]["dev_loss"] < curve[0]["dev_loss"]


def test_freeze_body_keeps_the_final_norm_frozen_unless_asked():
    model = _llama(len(OLD), tied=True)
    trained = freeze_body(model)
    assert trained == ["model.embed_tokens.weight"] and trainable_parameters(model) == len(OLD) * 16
    trained = freeze_body(model, train_final_norm=True)
    assert trained == ["model.embed_tokens.weight", "model.norm.weight"]


def test_truncated_teacher_gives_the_hidden_states_of_the_whole_model():
    model = _llama(50, tied=True, layers=5)
    ids = torch.randint(0, 50, (2, 9))
    full = model(ids, output_hidden_states=True).hidden_states
    cut = truncated_teacher(model, 2)
    assert len(cut.model.layers) == 3 and cut.config.num_hidden_layers == 3 and len(model.model.layers) == 5
    part = cut(ids, output_hidden_states=True).hidden_states
    for i in range(3):  # 0 (embeddings), 1, 2: raw block outputs, as in the whole model
        torch.testing.assert_close(part[i], full[i])
    assert not any(p.requires_grad for p in cut.parameters())
    with pytest.raises(ValueError, match=r"teacher_layer must be in 1\.\.5"):
        truncated_teacher(model, 6)


def test_package_paths_resolve_without_importing():
    from lmdistill.models import resolve_model_path

    assert resolve_model_path("package:lmdistill") == Path(__import__("lmdistill").__file__).parent
    assert resolve_model_path("gpt2") == "gpt2"
    with pytest.raises(FileNotFoundError, match="no installed package 'no_such_pkg_xyz'"):
        resolve_model_path("package:no_such_pkg_xyz")


# ------------------------------------------------------------------------------------------------ recipes


def test_packaged_stlm_recipes_validate_and_explain_their_errors():
    for name in ("stlm-smoke", "stlm-cpu", "stlm"):
        recipe = load_recipe(name)
        assert recipe.method == "stlm" and [v.name for v in recipe.variants][0] == "baseline"
    with pytest.raises(ConfigError, match="teacher.inits.0: must be one of"):
        load_recipe("stlm-cpu", ["teacher.inits=[zeros]"])
    with pytest.raises(ConfigError, match="teacher.use: must be 'best' or one of inits"):
        load_recipe("stlm-cpu", ["teacher.use=random", "teacher.inits=[mean_of_subwords]"])
    with pytest.raises(ConfigError, match="data.random_offset: must be false"):
        load_recipe("stlm-cpu", ["data.random_offset=true"])
    with pytest.raises(ConfigError, match="hint.student_layer: the student has 4 layers"):
        load_recipe("stlm-cpu", ["hint.student_layer=5"])
    with pytest.raises(ConfigError, match=r"evaluation.task_limits.hellaswag: is not one of tasks"):
        load_recipe("stlm-cpu", ["evaluation.task_limits={hellaswag: 3}"])


def test_gpu_recipe_parameter_counts_on_the_meta_device():
    """stlm: Qwen2-0.5B (its published config) adapted to GPT-2's 50,257 tokens, and a ~51M student."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lmdistill.models import build_model, count_parameters

    recipe = load_recipe("stlm")
    assert recipe.teacher.model.path == "Qwen/Qwen2-0.5B" and recipe.tokenizer.pretrained == "gpt2"
    gpt2_vocab = 50257
    qwen = Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=32768,
    )  # fmt: skip
    with torch.device("meta"):
        teacher = Qwen2ForCausalLM(qwen)
        assert 493e6 < count_parameters(teacher) < 495e6  # Qwen2-0.5B: 494M
        teacher.resize_token_embeddings(gpt2_vocab, mean_resizing=False)
        adapted = count_parameters(teacher)
        student = build_model(
            recipe.student.model, vocab_size=gpt2_vocab, block_size=512, bos_id=0, eos_id=0, pad_id=0
        )
    assert adapted == 494032768 - (151936 - gpt2_vocab) * 896
    assert 50e6 < count_parameters(student) < 53e6


# ------------------------------------------------------------------------------------------------ report


def test_paired_differences_are_a_t_interval_over_seeds():
    from lmdistill.reporting.stlm_report import paired_differences

    models = {}
    for seed, base, kd in ((1, 2.00, 1.90), (2, 2.10, 2.02), (3, 2.05, 1.93)):
        models[f"baseline-s{seed}"] = {"role": "baseline", "variant": "baseline", "seed": seed,
                                       "bits_per_byte": {"bits_per_byte": base}}  # fmt: skip
        models[f"kd-s{seed}"] = {"role": "student", "variant": "kd", "seed": seed,
                                 "bits_per_byte": {"bits_per_byte": kd}}  # fmt: skip
    d = paired_differences({"models": models})["kd"]
    diffs = [-0.10, -0.08, -0.12]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2)
    assert d["n"] == 3
    assert d["mean"] == pytest.approx(mean) and d["std"] == pytest.approx(sd)
    assert d["half_width"] == pytest.approx(4.3027 * sd / math.sqrt(3), rel=1e-4)  # t(0.975, 2), printed tables


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def smoke_teacher(tmp_path_factory, data_root):
    """A tiny LLaMA teacher with a 300-token tokenizer of its own (trained on other text than the student's)."""
    from lmdistill.config.sections import SourceConfig
    from lmdistill.data.corpus import load_corpus
    from lmdistill.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

    folder = tmp_path_factory.mktemp("teacher")
    docs = load_corpus(data_root, [SourceConfig(name="webtext", max_words=3000)], "train")
    save_tokenizer(train_tokenizer(docs, 300, 2), folder)
    tok = load_tokenizer(folder)
    model = _llama(len(tok), tied=True, layers=3)
    model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.save_pretrained(folder)
    return folder


SMOKE = ["seeds=[1]", "data.sources.0.max_words=2500", "data.sources.1.max_words=2500"]


@pytest.mark.slow
def test_stlm_smoke_runs_end_to_end_and_resumes(tmp_path, smoke_teacher, data_root, capsys):
    from lmdistill.cli import main
    from lmdistill.methods import get_method

    recipe = load_recipe("stlm-smoke", [f"teacher.model.path={smoke_teacher}", *SMOKE])
    run_dir = tmp_path / "run"
    results = get_method("stlm").run(recipe, run_dir, data_root=data_root, cache_dir=tmp_path / "cache")
    models = results["models"]
    assert list(models) == [
        "teacher-original", "teacher-random", "teacher-mean_of_subwords",
        "baseline-s1", "forward_kl-s1", "reverse_kl-s1", "forward_kl_hint-s1",
    ]  # fmt: skip
    original = models["teacher-original"]
    assert original["vocab_size"] == 300 and original["stage"] == "original"
    for name, m in models.items():
        bpb = m["bits_per_byte"]
        assert bpb["bits_per_byte"] == pytest.approx(bpb["nll"] / (math.log(2) * bpb["num_bytes"])), name
        assert set(m["eval"]) == {"blimp", "arc_easy"}
    # every model scored the same held-out text, whatever its tokenizer
    assert len({m["bits_per_byte"]["num_bytes"] for m in models.values()}) == 1
    assert sum(m.get("chosen", False) for m in models.values()) == 1
    assert "hint" in (run_dir / "models" / "forward_kl_hint-s1" / "metrics.jsonl").read_text()
    assert "reverse_kl" in (run_dir / "models" / "reverse_kl-s1" / "metrics.jsonl").read_text()
    report = (run_dir / "report.md").read_text()
    assert "## Table 1" in report and "teacher (own vocabulary)" in report and "forward_kl_hint" in report
    assert (run_dir / "plots" / "adaptation_curve.png").is_file()
    assert (run_dir / "plots" / "student_curves.png").is_file()
    # resume: nothing is trained or evaluated again, the results are the same
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.glob("models/*/final/model.safetensors")}
    again = get_method("stlm").run(recipe, run_dir, data_root=data_root, resume=True, cache_dir=tmp_path / "cache")
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("models/*/final/model.safetensors")} == stamps
    for name in models:
        assert again["models"][name]["bits_per_byte"] == models[name]["bits_per_byte"]
        assert again["models"][name]["eval"]["blimp"]["acc"] == models[name]["eval"]["blimp"]["acc"]
    # the adapted teacher is a teacher for any recipe of this tokenizer: Baby Llama takes it by model.path
    chosen = next(n for n, m in models.items() if m.get("chosen"))
    final = run_dir / "models" / chosen / "final"
    assert json.loads((final / "config.json").read_text())["vocab_size"] == len(AutoTokenizer.from_pretrained(final))
    # adapt-teacher on the same folder finds both adapted teachers done
    code = main(["adapt-teacher", "stlm-smoke", f"teacher.model.path={smoke_teacher}", *SMOKE,
                 "--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert code == 0
    assert "teacher-mean_of_subwords" in capsys.readouterr().out


def test_a_pretrained_tokenizer_is_used_as_it_is(tmp_path, data_root):
    """tokenizer.pretrained (the stlm recipe's GPT-2): no training; pad and bos fall back to eos."""
    from tokenizers import Tokenizer, models

    from lmdistill.config.sections import DataConfig, SourceConfig, TokenizerConfig
    from lmdistill.data.tokenizer import tokenizer_fingerprint
    from lmdistill.methods.stages import prepare_corpus

    vocab = {"<|endoftext|>": 0, **{chr(c): i + 1 for i, c in enumerate(range(32, 127))}, "<unk>": 96}
    gpt2_like = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.BPE(vocab, [], unk_token="<unk>")),  # characters, no merges
        eos_token="<|endoftext|>",
        unk_token="<unk>",
    )
    folder = tmp_path / "tok"
    gpt2_like.save_pretrained(folder)
    data = DataConfig(sources=[SourceConfig(name="inaugural", max_words=300, dev_max_words=200)], block_size=16)
    corpus = prepare_corpus(data, TokenizerConfig(pretrained=str(folder)), 0, tmp_path / "run", data_root, tmp_path)
    tok = corpus.tokenizer
    assert len(tok) == 97 and tok.pad_token == tok.bos_token == tok.eos_token == "<|endoftext|>"
    assert corpus.info["tokenizer_sha256"] == tokenizer_fingerprint(tok)
    assert int(corpus.train.tokens[0]) == 0  # documents start with the bos (= eos) token

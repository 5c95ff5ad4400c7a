"""The thin CLI: recipes ls/show/validate, and clear errors on bad input that leave nothing behind."""

import pytest

from lmdistill.cli import main


def test_recipes_ls_and_show(capsys):
    assert main(["recipes", "ls"]) == 0
    out = capsys.readouterr().out
    assert "babyllama-cpu" in out and "babyllama-smoke" in out and "babyllama " in out
    assert main(["recipes", "show", "babyllama-smoke", "--resolved", "distillation.alpha=0.25"]) == 0
    assert "alpha: 0.25" in capsys.readouterr().out


def test_recipes_validate(tmp_path, capsys, data_root):
    assert main(["recipes", "validate", "babyllama-cpu", "--data-root", str(data_root)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {sources: [{name: brown}], blok_size: 3}\n")
    assert main(["recipes", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "data.blok_size: unknown key. Did you mean: block_size?" in err


def test_help_explains(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--resume" in capsys.readouterr().out


def test_missing_and_empty_corpus_files_are_named(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "corpus" / "childes").mkdir(parents=True)
    (root / "corpus" / "childes" / "train.txt").write_text("")
    (root / "corpus" / "childes" / "dev.txt").write_text("hello there.\n")
    run_dir = tmp_path / "run"
    args = [
        "run",
        "babyllama-smoke",
        "--run-dir",
        str(run_dir),
        "--data-root",
        str(root),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(root / "corpus" / "childes" / "train.txt") in err
    (root / "corpus" / "childes" / "train.txt").write_text("some words here.\n")
    assert main(args) == 2  # a failed first run left no recipe.yaml: plain re-running is allowed
    err = capsys.readouterr().err
    assert str(root / "corpus" / "brown" / "train.txt") in err
    assert not (run_dir / "results.json").exists() and not (run_dir / "recipe.yaml").exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_missing_data_root_says_how_to_get_data(tmp_path, capsys):
    assert main(["run", "babyllama-smoke", "--run-dir", str(tmp_path / "r"), "--data-root", str(tmp_path / "no")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_teacher_with_another_tokenizer_is_refused(tmp_path, capsys, data_root):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmdistill.data.tokenizer import train_tokenizer

    teacher_dir = tmp_path / "teacher"
    tok = train_tokenizer(["a completely different corpus of words"] * 50, vocab_size=300)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    ).save_pretrained(teacher_dir)
    tok.save_pretrained(teacher_dir)
    args = [
        "run",
        "babyllama-smoke",
        "--run-dir",
        str(tmp_path / "run"),
        "--data-root",
        str(data_root),
        "--cache-dir",
        str(tmp_path / "cache"),
        f"teachers.members.0.model.path={teacher_dir}",
        "teachers.members.0.train=null",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "gpt2-teacher" in err and str(teacher_dir) in err and "lmdistill adapt-teacher" in err
    assert not (tmp_path / "run" / "results.json").exists()


def test_resume_without_a_run_folder_uses_the_default_recipe_folder(tmp_path, monkeypatch, capsys):
    import lmdistill.methods.babyllama

    seen = {}

    def fake_run(recipe, run_dir, **kwargs):
        seen.update(name=recipe.name, run_dir=str(run_dir), **kwargs)
        raise KeyboardInterrupt  # stop before any work

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lmdistill.methods.babyllama, "run", fake_run)
    assert main(["run", "--resume"]) == 130  # Ctrl-C outside a training step: a message, not a traceback
    assert "interrupted" in capsys.readouterr().err
    assert seen["name"] == "babyllama-cpu" and seen["run_dir"] == "runs/babyllama-cpu" and seen["resume"]


def test_resume_a_folder_without_recipe_yaml_is_an_error(tmp_path, capsys):
    assert main(["run", "--resume", "--run-dir", str(tmp_path)]) == 2
    assert "no recipe.yaml" in capsys.readouterr().err


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_llama, tiny_tokenizer):
    folder = tmp_path / "tiny"
    tiny_llama.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_eval_writes_results_table_and_plot(tiny_model_dir, tmp_path, data_root, capsys):
    import json

    out = tmp_path / "out"
    args = ["eval", str(tiny_model_dir), "--tasks", "arc_easy,winogrande", "--limit", "3", "--output-dir", str(out)]
    assert main([*args, "--data-root", str(data_root)]) == 0
    results = json.loads((out / "tiny" / "results.json").read_text())
    assert results["tasks"] == ["arc_easy", "winogrande"] and results["limit"] == 3
    assert results["results"]["arc_easy"]["num_items"] == 3 and "acc_norm" in results["results"]["arc_easy"]
    assert "arc_easy (norm)" in (out / "comparison.md").read_text()
    assert (out / "tasks.png").read_bytes()[:4] == b"\x89PNG"
    assert "| tiny |" in capsys.readouterr().out


def test_eval_bad_input_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    assert main(["eval", str(tiny_model_dir), "--tasks", "blimp,arc_esy", "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Unknown task 'arc_esy'. Did you mean: arc_easy?" in err and "winogrande" in err
    assert main(["eval", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["eval", "--list-tasks"]) == 0
    assert "mmlu" in capsys.readouterr().out


def test_version_and_recipes_show_applies_its_overrides(capsys):
    import lmdistill

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and lmdistill.__version__ in capsys.readouterr().out
    assert main(["recipes", "show", "babyllama-smoke", "student.train.epochs=7"]) == 0
    captured = capsys.readouterr()
    assert "epochs: 7" in captured.out and "shown resolved" in captured.err


def test_a_typo_in_an_override_is_reported_as_the_command_lines(tmp_path):
    import yaml

    from lmdistill.config import ConfigError, load_recipe, recipe_path

    with pytest.raises(ConfigError, match=r"^command line \(override distillation\.temprature=3\): .*Did you mean"):
        load_recipe("babyllama-smoke", ["distillation.temprature=3"])
    # a typo in the file itself is still the file's, whatever the command line overrides
    data = yaml.safe_load(recipe_path("babyllama-smoke").read_text())
    data["distillation"]["temprature"] = 3.0
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"r\.yaml: distillation\.temprature: unknown key"):
        load_recipe(str(tmp_path / "r.yaml"), ["student.train.epochs=3"])


@pytest.mark.parametrize(
    "argv",
    [
        ["recipes", "ls"],
        ["recipes", "show", "stlm-cpu", "seeds=[1]"],
        ["recipes", "validate", "babyllama-cpu"],
        ["recipes", "validate", "stlm-cpu", "teacher.inits=[random]", "teacher.use=best"],
        ["eval", "--list-tasks"],
        ["recipes", "show", "babyllama-cpu", "student.train.epoks=3"],  # a typo: the error needs no model either
        ["run", "babyllama-cpu", "student.train.epoks=3"],
        ["adapt-teacher", "stlm-cpu", "teacher.init=[random]"],
    ],
)
def test_commands_that_need_no_model_import_no_torch_or_transformers(argv):
    import subprocess
    import sys

    code = (
        f"import sys; from lmdistill.cli import main; rc = main({argv!r}); "
        "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    rc = 2 if "epoks" in " ".join(argv) or "init=" in " ".join(argv) else 0
    assert out.strip().splitlines()[-1] == f"{rc} False False"


def test_a_data_root_without_evaluation_data_fails_before_training(tmp_path, data_root, capsys):
    """recipes validate and run check the evaluation data too: a root without blimp/ fails before any training."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_root / "corpus" / "childes", root / "corpus" / "childes")
    shutil.copytree(data_root / "corpus" / "brown", root / "corpus" / "brown")
    overrides = ["evaluation.tasks=[blimp]"]
    assert main(["recipes", "validate", "babyllama-smoke", *overrides, "--data-root", str(root)]) == 1
    assert "evaluation task blimp" in capsys.readouterr().err
    run_dir = tmp_path / "run"
    args = ["run", "babyllama-smoke", *overrides, "--run-dir", str(run_dir), "--data-root", str(root)]
    assert main([*args, "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "evaluation task blimp" in capsys.readouterr().err
    assert not list(run_dir.glob("models/*/final")) and not list(run_dir.glob("models/*/checkpoints/step-*"))


def test_list_tasks_says_which_have_no_data(data_root, capsys):
    assert main(["eval", "--list-tasks", "--data-root", str(data_root)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["hellaswag"].endswith("(no data under the data root)")  # not available offline
    assert not lines["blimp"].endswith("(no data under the data root)")

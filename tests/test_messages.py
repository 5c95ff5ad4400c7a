"""Error messages name the file (and key or line) and what was expected, on one line, for each kind of bad input.

Each test builds the bad input itself (a truncated shard, a corrupt manifest, a recipe with a syntax error, a
corpus file with Latin-1 bytes, a full disk, ...) and checks the message, not only the exception type.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

from lmdistill.cli import main
from lmdistill.config import ConfigError, ModelConfig, SourceConfig, load_recipe
from lmdistill.data import tokens as tokens_module
from lmdistill.data.blocks import BlockDataset, dev_blocks
from lmdistill.data.corpus import load_documents
from lmdistill.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from lmdistill.data.tokens import tokenize_documents
from lmdistill.evaluation.checkpoints import evaluate_checkpoints
from lmdistill.models import build_model
from lmdistill.teachers import TeacherEnsemble, cache_build
from lmdistill.teachers.cache import CacheCorruptError, TeacherCache, build_cache, cache_spec, ensure_cache

V, T = 64, 8


def _one_line(err: BaseException) -> str:
    message = str(err)
    assert "\n" not in message, f"the message spans several lines: {message!r}"
    return message


# --- teacher cache ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teachers():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="llama", num_layers=1, num_heads=2, hidden_size=16, intermediate_size=32, dropout=0.0)
    return {"t": build_model(cfg, vocab_size=V, block_size=T, bos_id=1, eos_id=2, pad_id=0)}


def _blocks():
    return BlockDataset(np.random.default_rng(0).integers(0, V, T * 6).astype(np.uint16), T)


def _cache(teachers, folder: Path, **kw):
    blocks = _blocks()
    spec = cache_spec(teachers, "logits", "tok", blocks, top_k=4, dtype="float16", temperature=1.0, shard_blocks=2)
    ensure_cache(TeacherEnsemble(list(teachers.values())), blocks, spec, folder, batch_size=2, **kw)
    return spec


def test_a_shard_with_a_corrupt_header_is_named(tmp_path, teachers):
    spec = _cache(teachers, tmp_path)
    shard = tmp_path / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[:8] = (10**9).to_bytes(8, "little")  # same size, but the header length points past the end of the file
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError) as err:
        TeacherCache.open(tmp_path, spec, verify=False)  # sizes match: only reading the header finds it
    message = _one_line(err.value)
    assert str(shard) in message and "not a readable safetensors file" in message and "--overwrite" in message


def test_a_truncated_shard_recorded_at_its_truncated_size_is_named(tmp_path, teachers):
    spec = _cache(teachers, tmp_path)
    shard = tmp_path / "shard-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-40])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"][2]["bytes"] = shard.stat().st_size  # as if the manifest had been written after the cut
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheCorruptError, match=r"shard-00002\.safetensors is not a readable safetensors file"):
        TeacherCache.open(tmp_path, spec, verify=False)


def test_a_corrupt_manifest_is_named(tmp_path, teachers):
    spec = _cache(teachers, tmp_path)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])
    for opener in (lambda: TeacherCache.open(tmp_path, spec), lambda: _cache(teachers, tmp_path)):
        with pytest.raises(CacheCorruptError) as err:
            opener()
        message = _one_line(err.value)
        assert f"teacher cache manifest {manifest} is not valid JSON" in message
        assert f"delete {manifest} and run the build again" in message


def test_a_manifest_without_shards_names_the_manifest_and_the_key(tmp_path, teachers):
    spec = _cache(teachers, tmp_path)
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["shards"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(CacheCorruptError) as err:
        TeacherCache.open(tmp_path, spec)
    message = _one_line(err.value)
    assert f"teacher cache manifest {path} has no 'shards' key" in message and "list of shard files" in message
    del manifest["top_k"], manifest["dtype"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(CacheCorruptError, match=r"has no 'shards', 'top_k', 'dtype' keys"):
        TeacherCache.open(tmp_path, spec)


def test_a_corrupt_spec_json_is_named(tmp_path, teachers):
    blocks = _blocks()
    spec = cache_spec(teachers, "logits", "tok", blocks, top_k=4, dtype="float16", temperature=1.0, shard_blocks=2)
    ensemble = TeacherEnsemble(list(teachers.values()))
    build_cache(ensemble, blocks, spec, tmp_path, batch_size=2)
    (tmp_path / "spec.json").write_text('{"teachers": ')
    with pytest.raises(CacheCorruptError, match=rf"teacher cache spec {tmp_path / 'spec.json'} is not valid JSON"):
        build_cache(ensemble, blocks, spec, tmp_path, batch_size=2)


def test_a_full_disk_while_writing_a_shard_names_it_and_the_space_needed(tmp_path, teachers, monkeypatch):
    def full(arrays, path):  # what safetensors raises on ENOSPC (it carries no errno)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(cache_build, "save_file", full)
    with pytest.raises(OSError) as err:
        _cache(teachers, tmp_path)
    message = _one_line(err.value)
    assert err.value.errno == errno.ENOSPC
    assert f"while writing {tmp_path / 'shard-00000.safetensors'}" in message
    needed = 2 * T * 4 * (2 + 2) + 2 * T * 4 + 1024  # 2 blocks: float16 log-probs, uint16 ids, float32 tail + header
    assert f"the write needs {needed:,} bytes" in message and "are free there" in message
    assert "teachers.cache_dir" in message
    assert not list(tmp_path.glob(".shard-*.tmp"))


# --- recipes ---------------------------------------------------------------------------------------------------


def _run_folder_recipe(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    recipe = run / "recipe.yaml"
    shutil.copy(Path(__file__).parents[1] / "src" / "lmdistill" / "recipes" / "babyllama-smoke.yaml", recipe)
    return recipe


def test_a_yaml_syntax_error_in_a_run_folders_recipe_names_the_file_and_line(tmp_path):
    recipe = _run_folder_recipe(tmp_path)
    lines = recipe.read_text().splitlines()
    lines.insert(3, "seed: [42")  # an unclosed flow sequence on line 4
    recipe.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(str(recipe))
    message = _one_line(err.value)
    assert message.startswith(f"{recipe}:") and "not valid YAML" in message and "<unicode string>" not in message
    assert "flow sequence at line 4" in message


def test_a_tab_in_a_recipe_names_the_line_and_column(tmp_path):
    recipe = _run_folder_recipe(tmp_path)
    recipe.write_text(recipe.read_text() + "\tseed: 1\n")
    line = len(recipe.read_text().splitlines())
    with pytest.raises(ConfigError, match=rf"^{recipe}:{line}:1: not valid YAML: found character '\\t'"):
        load_recipe(str(recipe))


def test_an_unknown_key_in_a_run_folders_recipe_names_the_file_and_key(tmp_path):
    recipe = _run_folder_recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace("  block_size: 64", "  blok_size: 64"))
    with pytest.raises(ConfigError) as err:
        load_recipe(str(recipe))
    message = _one_line(err.value)
    assert message.startswith(f"{recipe}: data.blok_size: unknown key") and "Did you mean: block_size?" in message


# --- tokenizer -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"version": "1.0", "truncation": null, "padd',  # cut mid-write
        '{"version": "1.0"}',  # JSON, but not a tokenizer
        "\xff\xfe not json",
    ],
)
def test_a_corrupt_tokenizer_json_is_named(tmp_path, text):
    folder = save_tokenizer(train_tokenizer(["a few words of text", "and a few more"], vocab_size=270), tmp_path / "t")
    (folder / "tokenizer.json").write_text(text, encoding="latin-1")
    with pytest.raises(ValueError) as err:
        load_tokenizer(folder)
    message = _one_line(err.value)
    assert message.startswith(f"{folder / 'tokenizer.json'} is not a valid tokenizer (")
    assert "expected the tokenizer.json and tokenizer_config.json" in message


def test_an_eval_folder_without_tokenizer_files_says_so(tmp_path, tiny_llama, capsys):
    folder = tmp_path / "student"
    tiny_llama.save_pretrained(folder)  # weights and config only, like a checkpoints/step-N/ folder
    with pytest.raises(FileNotFoundError) as err:
        evaluate_checkpoints([folder], "arc_easy", output_dir=tmp_path / "out")
    message = _one_line(err.value)
    assert f"{folder} has no tokenizer files: expected tokenizer.json" in message and "You need" not in message
    assert main(["eval", str(folder), "--tasks", "arc_easy", "--output-dir", str(tmp_path / "o")]) == 2
    assert f"error: {folder} has no tokenizer files" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


# --- corpus, blocks, token cache -------------------------------------------------------------------------------


def test_a_corpus_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "corpus" / "mine" / "train.txt"
    path.parent.mkdir(parents=True)
    path.write_bytes("first line\n\nsecond document\ncaf\u00e9 in Latin-1\n".encode("latin-1"))
    with pytest.raises(ValueError) as err:
        load_documents(tmp_path, SourceConfig("mine"), "train")
    message = _one_line(err.value)
    assert message.startswith(f"corpus file {path}, line 4: not valid UTF-8 (byte 0xe9 at byte 4 of the line)")
    assert "must be UTF-8" in message


def test_too_few_tokens_names_the_split_and_sources():
    with pytest.raises(ValueError) as err:
        BlockDataset(np.arange(5), 8, split="train", sources=["brown", "childes"])
    message = _one_line(err.value)
    assert message.startswith("the train split has only 5 tokens (sources: brown, childes), fewer than one block of 8")
    assert "data.sources[].max_words" in message and "data.block_size" in message
    with pytest.raises(ValueError, match=r"the dev split has 5 tokens \(sources: brown\).*dev_max_words"):
        dev_blocks(np.arange(5), 8, None, sources=["brown"])


class _FullFile:
    """A file object on a full disk: the first write fails with ENOSPC."""

    def __init__(self, path, mode="r", *args, **kwargs):
        self._file = open(path, mode, *args, **kwargs)  # noqa: SIM115

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def test_a_full_disk_while_writing_a_token_cache_names_it_and_the_space_needed(tmp_path, tiny_tokenizer, monkeypatch):
    docs = ["the first document", "and the second one"]
    monkeypatch.setattr(tokens_module, "open", _FullFile, raising=False)  # the module's own open(): its file writes
    with pytest.raises(OSError) as err:
        tokenize_documents(docs, tiny_tokenizer, tmp_path, "train")
    message = _one_line(err.value)
    path = tmp_path / f"train-{tokens_module.cache_key(docs, tiny_tokenizer)}.npy"
    num_tokens = sum(len(tiny_tokenizer.encode(d, add_special_tokens=False)) + 2 for d in docs)
    assert err.value.errno == errno.ENOSPC and f"while writing {path}:" in message
    assert f"the write needs {128 + 2 * num_tokens:,} bytes" in message and "LMDISTILL_CACHE" in message
    assert not list(tmp_path.iterdir())  # no temporary file left behind

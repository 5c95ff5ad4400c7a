"""The teacher cache: what it stores, resuming a build, ranks, mismatches and corruption, and training from it."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmdistill.config import ModelConfig, TrainConfig
from lmdistill.data.blocks import BlockDataset
from lmdistill.losses import DistillationObjective
from lmdistill.losses.topk import topk_teacher
from lmdistill.models import build_model
from lmdistill.teachers import TeacherEnsemble, cache_build
from lmdistill.teachers import cache as cache_module
from lmdistill.teachers.cache import (
    CacheCorruptError,
    CacheIncompleteError,
    CacheMismatchError,
    TeacherCache,
    build_cache,
    cache_spec,
    ensure_cache,
    finalize_cache,
    model_fingerprint,
)
from lmdistill.training import train

V, T = 96, 16


def _model(arch, seed):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, num_layers=1, num_heads=2, hidden_size=16, intermediate_size=32, dropout=0.0)
    return build_model(cfg, vocab_size=V, block_size=T, bos_id=1, eos_id=2, pad_id=0)


@pytest.fixture(scope="module")
def teachers():
    return {"gpt2-teacher": _model("gpt2", 1), "llama-teacher": _model("llama", 2)}


def _blocks(n_tokens=T * 21, random_offset=False):
    rng = np.random.default_rng(0)
    return BlockDataset(rng.integers(0, V, n_tokens).astype(np.uint16), T, seed=3, random_offset=random_offset)


def _spec(teachers, blocks, **kw):
    settings = {"top_k": 8, "dtype": "float16", "temperature": 2.0, "shard_blocks": 4, **kw}
    return cache_spec(teachers, "logits", "tok-sha", blocks, **settings)


def _build(teachers, blocks, spec, folder, **kw):
    ensemble = TeacherEnsemble(list(teachers.values()), "logits")
    return ensure_cache(ensemble, blocks, spec, folder, batch_size=3, **kw)


def test_cache_holds_the_ensembles_top_k_and_tail(tmp_path, teachers):
    blocks = _blocks()
    for dtype, tol in (("float32", 1e-6), ("float16", 2e-2)):
        spec = _spec(teachers, blocks, dtype=dtype)
        cache = _build(teachers, blocks, spec, tmp_path / dtype)
        assert spec.num_blocks == 21 and spec.num_shards == 6 and len(cache.manifest["shards"]) == 6
        index = np.array([20, 0, 7, 13])  # blocks of different shards, out of order
        got = cache.lookup(index)
        ids = blocks.batch(index * T)
        want = topk_teacher(TeacherEnsemble(list(teachers.values()))(ids), 8, 2.0)
        assert got.log_probs.shape == (4, T, 8) and got.ids.dtype == torch.int64
        torch.testing.assert_close(got.ids, want.ids)
        torch.testing.assert_close(got.log_probs, want.log_probs, rtol=0, atol=tol)
        torch.testing.assert_close(got.log_tail, want.log_tail, rtol=0, atol=1e-6)  # the tail is kept in float32
        assert got.temperature == 2.0 and got.vocab_size == V


def test_bytes_per_token_at_k_64_is_260_plus_headers(tmp_path, teachers):
    blocks = _blocks(T * 40)
    cache = _build(teachers, blocks, _spec(teachers, blocks, top_k=64, shard_blocks=40), tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["id_dtype"] == "uint16"
    payload = 64 * (2 + 2) + 4  # float16 log-prob + uint16 id per kept token, float32 log tail
    assert payload <= manifest["bytes_per_token"] < payload + 2  # one shard: a few hundred header bytes
    assert manifest["total_bytes"] == sum(p.stat().st_size for p in tmp_path.glob("shard-*.safetensors"))
    assert cache.spec.top_k == 64


def test_manifest_records_what_the_cache_was_built_from(tmp_path, teachers):
    blocks = _blocks()
    spec = _spec(teachers, blocks)
    _build(teachers, blocks, spec, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert list(manifest["teachers"]) == ["gpt2-teacher", "llama-teacher"]
    assert all(len(h) == 64 for h in manifest["teachers"].values())
    for key in ("tokenizer_sha256", "tokens_sha256", "block_size", "top_k", "dtype", "temperature", "ensemble"):
        assert key in manifest
    assert "log_softmax(z / temperature)" in manifest["semantics"]
    for shard in manifest["shards"]:
        assert len(shard["sha256"]) == 64 and shard["bytes"] > 0


def test_interrupted_build_resumes_at_the_first_missing_shard(tmp_path, teachers, monkeypatch):
    blocks = _blocks()
    spec = _spec(teachers, blocks)
    ensemble = TeacherEnsemble(list(teachers.values()), "logits")
    real_save = cache_build.save_file
    calls = {"n": 0}

    def crash_on_third_shard(arrays, path):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_save(arrays, path)

    monkeypatch.setattr(cache_build, "save_file", crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        build_cache(ensemble, blocks, spec, tmp_path / "cut", batch_size=3)
    monkeypatch.setattr(cache_build, "save_file", real_save)
    assert not (tmp_path / "cut" / "manifest.json").exists()
    assert not list((tmp_path / "cut").glob(".*tmp")), "no half-written shard may be left behind"
    with pytest.raises(CacheIncompleteError, match="no finished teacher cache .* 2 shards built"):
        TeacherCache.open(tmp_path / "cut")
    assert build_cache(ensemble, blocks, spec, tmp_path / "cut", batch_size=3) == [2, 3, 4, 5]
    finalize_cache(tmp_path / "cut", spec)
    _build(teachers, blocks, spec, tmp_path / "whole")
    for shard in range(spec.num_shards):
        name = f"shard-{shard:05d}.safetensors"
        a, b = load_file(tmp_path / "cut" / name), load_file(tmp_path / "whole" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_ranks_build_disjoint_shards_that_make_the_same_cache(tmp_path, teachers):
    blocks = _blocks()
    spec = _spec(teachers, blocks)
    ensemble = TeacherEnsemble(list(teachers.values()), "logits")
    assert build_cache(ensemble, blocks, spec, tmp_path / "ranks", batch_size=3, rank=0, world_size=2) == [0, 2, 4]
    with pytest.raises(CacheIncompleteError, match="3 of 6 shards are not built .*shard-00001"):
        finalize_cache(tmp_path / "ranks", spec)
    assert build_cache(ensemble, blocks, spec, tmp_path / "ranks", batch_size=3, rank=1, world_size=2) == [1, 3, 5]
    finalize_cache(tmp_path / "ranks", spec)
    _build(teachers, blocks, spec, tmp_path / "one")
    a = json.loads((tmp_path / "ranks" / "manifest.json").read_text())["shards"]
    b = json.loads((tmp_path / "one" / "manifest.json").read_text())["shards"]
    assert [s["sha256"] for s in a] == [s["sha256"] for s in b]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"top_k": 4}, r"top_k: cache 8, run 4"),
        ({"temperature": 1.0}, r"temperature: cache 2\.0, run 1\.0"),
        ({"dtype": "float32"}, r"dtype: cache 'float16', run 'float32'"),
    ],
)
def test_opening_with_other_settings_names_what_differs(tmp_path, teachers, change, match):
    blocks = _blocks()
    _build(teachers, blocks, _spec(teachers, blocks), tmp_path)
    with pytest.raises(CacheMismatchError, match=match):
        TeacherCache.open(tmp_path, _spec(teachers, blocks, **change))
    with pytest.raises(CacheMismatchError, match=match):  # and a run that would build on top of it refuses too
        _build(teachers, blocks, _spec(teachers, blocks, **change), tmp_path)


def test_other_teachers_or_tokens_are_named(tmp_path, teachers):
    blocks = _blocks()
    _build(teachers, blocks, _spec(teachers, blocks), tmp_path)
    retrained = {**teachers, "llama-teacher": _model("llama", 99)}
    with pytest.raises(CacheMismatchError, match=r"teacher llama-teacher: cache sha256 \w{12}, run sha256 \w{12}"):
        TeacherCache.open(tmp_path, _spec(retrained, blocks))
    other_tokens = _blocks(T * 22)
    with pytest.raises(CacheMismatchError, match=r"tokens_sha256: .*num_tokens: cache 336, run 352"):
        TeacherCache.open(tmp_path, _spec(teachers, other_tokens))
    rebuilt = _build(retrained, blocks, _spec(retrained, blocks), tmp_path, overwrite=True)
    assert rebuilt.spec.teachers["llama-teacher"] == model_fingerprint(retrained["llama-teacher"])
    assert rebuilt.spec.teachers["llama-teacher"] != model_fingerprint(teachers["llama-teacher"])
    TeacherCache.open(tmp_path, _spec(retrained, blocks))


def test_truncated_or_corrupted_shards_are_named(tmp_path, teachers):
    blocks = _blocks()
    spec = _spec(teachers, blocks)
    _build(teachers, blocks, spec, tmp_path)
    shard = tmp_path / "shard-00003.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(
        CacheCorruptError, match=r"shard-00003\.safetensors has [\d,]+ bytes, the manifest says .*trunc"
    ):
        TeacherCache.open(tmp_path, spec)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    with pytest.raises(CacheCorruptError, match=r"shard-00003\.safetensors does not match its SHA-256"):
        TeacherCache.open(tmp_path, spec)
    shard.unlink()
    with pytest.raises(CacheCorruptError, match=r"shard-00003\.safetensors is missing"):
        TeacherCache.open(tmp_path, spec)


def test_random_offsets_are_refused(teachers):
    with pytest.raises(ValueError, match="random_offset: false"):
        _spec(teachers, _blocks(random_offset=True))


def test_training_from_a_full_cache_equals_training_with_online_teachers(tmp_path, teachers):
    """A cached teacher is a teacher: at k = V in float32 the student gets the same updates as online."""
    blocks = _blocks(T * 40)
    dev = torch.from_numpy(blocks.tokens[: 2 * T].astype(np.int64)).view(2, T)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=3e-3, warmup_steps=2, save_every_steps=0, log_every_steps=1)
    ensemble = TeacherEnsemble(list(teachers.values()), "logits")
    cache = _build(teachers, blocks, _spec(teachers, blocks, top_k=V, dtype="float32"), tmp_path / "cache")
    objective = DistillationObjective(alpha=0.5, temperature=2.0, divergence="forward_kl")
    online = train(_model("llama", 7), blocks, dev, cfg, tmp_path / "online", objective=objective, teacher=ensemble)
    cached = train(_model("llama", 7), blocks, dev, cfg, tmp_path / "cached", objective=objective, teacher=cache)
    a, b = load_file(online.final_dir / "model.safetensors"), load_file(cached.final_dir / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    lines = [
        [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (tmp_path / "online", tmp_path / "cached")
    ]
    for x, y in zip(*lines, strict=True):
        if "forward_kl" in x:
            assert y["forward_kl"] == pytest.approx(x["forward_kl"], rel=1e-4)


def test_training_refuses_a_cache_for_shifted_blocks(tmp_path, teachers):
    blocks = _blocks()
    cache = _build(teachers, blocks, _spec(teachers, blocks), tmp_path)
    shifted = BlockDataset(blocks.tokens, T, seed=3, random_offset=True)
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, warmup_steps=0, save_every_steps=0)
    with pytest.raises(ValueError, match="without random_offset"):
        train(_model("llama", 0), shifted, shifted.batch(np.array([0])), cfg, tmp_path / "run",
              objective=DistillationObjective(alpha=0.5), teacher=cache)  # fmt: skip


def _strip_spec_from_sidecars(folder):
    for sidecar in folder.glob("shard-*.json"):
        record = json.loads(sidecar.read_text())
        record.pop("spec")
        sidecar.write_text(json.dumps(record))


def test_sidecars_record_the_spec_their_shard_was_built_for(tmp_path, teachers):
    blocks = _blocks()
    spec = _spec(teachers, blocks)
    _build(teachers, blocks, spec, tmp_path)
    for shard in range(spec.num_shards):
        record = json.loads((tmp_path / f"shard-{shard:05d}.json").read_text())
        assert cache_module.CacheSpec.from_json(record["spec"]) == spec


def test_leftover_shards_of_another_spec_are_rebuilt_when_spec_json_is_gone(tmp_path, teachers, caplog):
    blocks = _blocks()
    old, new = _spec(teachers, blocks, top_k=16), _spec(teachers, blocks, top_k=8)
    _build(teachers, blocks, old, tmp_path / "cache")
    for name in ("spec.json", "manifest.json"):  # what a half-cleaned folder looks like: only the shards are left
        (tmp_path / "cache" / name).unlink()
    ensemble = TeacherEnsemble(list(teachers.values()), "logits")
    with caplog.at_level("WARNING", logger="lmdistill.teachers"):
        assert build_cache(ensemble, blocks, new, tmp_path / "cache", batch_size=3) == list(range(new.num_shards))
    assert "shard-00000.safetensors is not taken into this build: it was built for other settings (top_k: cache 16, " \
        "run 8); building it again" in caplog.text  # fmt: skip
    finalize_cache(tmp_path / "cache", new)
    cache = TeacherCache.open(tmp_path / "cache", new)
    assert cache.lookup([0, 20]).log_probs.shape == (2, T, 8)
    fresh = _build(teachers, blocks, new, tmp_path / "fresh")
    assert [s["sha256"] for s in cache.manifest["shards"]] == [s["sha256"] for s in fresh.manifest["shards"]]


def test_shards_whose_sidecar_records_no_spec_are_rebuilt(tmp_path, teachers, caplog):
    blocks = _blocks()
    spec = _spec(teachers, blocks)
    ensemble = TeacherEnsemble(list(teachers.values()), "logits")
    build_cache(ensemble, blocks, spec, tmp_path, batch_size=3)
    _strip_spec_from_sidecars(tmp_path)  # as an older version (or a foreign build) wrote them
    with pytest.raises(CacheIncompleteError, match=r"6 of 6 shards are not built .*records no spec"):
        finalize_cache(tmp_path, spec)
    with caplog.at_level("WARNING", logger="lmdistill.teachers"):
        assert build_cache(ensemble, blocks, spec, tmp_path, batch_size=3) == list(range(spec.num_shards))
    assert "shard-00002.json records no spec" in caplog.text and "building it again" in caplog.text
    finalize_cache(tmp_path, spec)
    TeacherCache.open(tmp_path, spec)


def test_stale_shard_temporaries_are_removed_when_a_build_starts_or_resumes(tmp_path, teachers, caplog):
    blocks = _blocks()
    spec = _spec(teachers, blocks)
    ensemble = TeacherEnsemble(list(teachers.values()), "logits")
    tmp_path.mkdir(exist_ok=True)
    # the names atomic_path gives (".<name>.<random>.tmp"), as left by a build that was killed mid-write
    stale = [".shard-00001.safetensors.k3j9x0.tmp", ".shard-00002.json.a1b2c3.tmp", ".shard-00099.safetensors.zz.tmp"]
    for name in stale:
        (tmp_path / name).write_bytes(b"half a shard")
        os.utime(tmp_path / name, (time.time() - 3600,) * 2)  # an hour old: not being written
    (tmp_path / ".shard-00003.safetensors.live.tmp").write_bytes(b"")  # just created: maybe another process's write
    (tmp_path / ".manifest.json.q1.tmp").write_text("{")  # not a shard temporary: left alone
    with caplog.at_level("INFO", logger="lmdistill.teachers"):
        assert build_cache(ensemble, blocks, spec, tmp_path, batch_size=3, rank=1, world_size=2) == [1, 3, 5]
    left = sorted(p.name for p in tmp_path.glob(".shard-*.tmp"))
    assert left == sorted([*stale[1:], ".shard-00003.safetensors.live.tmp"])  # rank 1 removes its old ones only
    assert "removed 1 temporary file(s) left by an interrupted build" in caplog.text
    assert build_cache(ensemble, blocks, spec, tmp_path, batch_size=3, rank=0, world_size=2) == [0, 2, 4]
    left = [p.name for p in tmp_path.glob(".shard-*.tmp")]  # rank 0: its own and those of shards outside this build
    assert left == [".shard-00003.safetensors.live.tmp"]
    assert (tmp_path / ".manifest.json.q1.tmp").exists()
    finalize_cache(tmp_path, spec)
    TeacherCache.open(tmp_path, spec)

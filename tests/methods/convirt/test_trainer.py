"""ConVIRT's step: global batch over 8 devices, gradient caching, frozen text layers, sentence sampling."""

import json
import subprocess
import sys

import chex
import jax
import jax.extend
import numpy as np
import pytest
import tensorflow as tf

from cxr_jax import config as config_lib
from cxr_jax import parallel
from cxr_jax.data import sources
from cxr_jax.methods.convirt import trainer as convirt
from cxr_jax.train import loop
from tests.conftest import ROOT, cli_env, data_spec, image_folder

SMOKE = f"{ROOT / 'configs' / 'convirt.py'}:smoke"


@pytest.mark.slow  # ~95 s; cheaper: test_losses' 8-device global batch and the cached-vs-plain jaxpr test.
def test_eight_devices_and_gradient_caching_give_the_same_gradients():
    overrides = ["batch_size=16", "model.learn_temperature=True"]  # τ's gradient takes its own path when cached.
    proc = subprocess.run([sys.executable, "-m", "tests.methods.convirt.devices", SMOKE, *overrides], cwd=ROOT,
                          env=cli_env(devices=8), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diffs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert diffs["cached_vs_chunked_1"] < 1e-5 and diffs["cached_vs_chunked_8"] < 1e-5, diffs
    # 8 shards reduce BatchNorm statistics and the loss in another order: float32 rounding, ~1e-5 of a leaf.
    assert diffs["plain_8_vs_1"] < 5e-5 and diffs["chunked_8_vs_1"] < 5e-5, diffs
    np.testing.assert_allclose(diffs["loss_8"], diffs["loss_1"], rtol=1e-6)


@pytest.fixture(scope="module")
def smoke():
    config = config_lib.load(SMOKE)
    mesh = parallel.make_mesh(jax.devices()[:1])
    method = convirt.ConVIRT(config, mesh)
    s = loop.setup(config, mesh=mesh, method=method)
    return config, method, s


@pytest.mark.slow
def test_step_trains_the_free_parameters_only(smoke):
    config, method, s = smoke
    state = s.init_fn(jax.random.key(0), s.first_batch)
    before = jax.device_get(state.params["model"])
    for _ in range(2):  # The warm-up's learning rate is 0 at step 0.
        state, metrics = s.step_fn(state, s.first_batch)
    after = jax.device_get(state.params["model"])
    assert np.isfinite(metrics["loss"]) and int(state.step) == 2
    text = config.model.text
    assert text.freeze_embeddings and text.frozen_layers == 1
    for name in ("word_embeddings", "embeddings_norm", "layer_0"):
        for x, y in zip(jax.tree.leaves(before["text_encoder"][name]), jax.tree.leaves(after["text_encoder"][name])):
            np.testing.assert_array_equal(x, y)  # Frozen: not even weight decay moves them.
    moved = [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before["text_encoder"]["layer_1"]),
                                                      jax.tree.leaves(after["text_encoder"]["layer_1"]))]
    assert all(moved)


def _convolutions_in_loops(jaxpr, in_loop: bool = False) -> int:
    count = 0
    for eqn in jaxpr.eqns:
        loop_here = in_loop or eqn.primitive.name in ("scan", "while")
        count += loop_here and eqn.primitive.name == "conv_general_dilated"
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += _convolutions_in_loops(sub, loop_here)
    return count


def test_cpu_steps_run_the_towers_outside_any_loop():
    """XLA:CPU runs convolutions inside a while loop many times slower (jax-ml/jax#12868)."""
    mesh = parallel.make_mesh(jax.devices()[:1])

    def in_loops(overrides):
        config = config_lib.load(SMOKE, overrides)
        s = loop.setup(config, mesh=mesh, method=convirt.ConVIRT(config, mesh))
        return _convolutions_in_loops(jax.make_jaxpr(s.method.train_step)(s.abstract_state, s.first_batch).jaxpr)

    assert in_loops([]) == 0
    assert in_loops(["train.grad_cache_chunks=2"]) == 0  # chunk_loop=auto writes the micro-batches out on CPU.
    assert in_loops(["train.grad_cache_chunks=2", "train.chunk_loop=scan"]) > 0  # As accelerators run it.
    assert in_loops(["train.grad_cache_chunks=2", "train.chunk_loop=unrolled"]) == 0


@pytest.mark.slow  # Two compiles (~30 s). Default run: the loops' structure (above); slow: also the 8-device test.
def test_chunk_loops_give_the_same_step():
    mesh = parallel.make_mesh(jax.devices()[:1])
    results = {}
    for how in ("scan", "unrolled"):
        config = config_lib.load(SMOKE, ["train.grad_cache_chunks=2", f"train.chunk_loop={how}"])
        s = loop.setup(config, mesh=mesh, method=convirt.ConVIRT(config, mesh))
        state = s.init_fn(jax.random.key(0), s.first_batch)
        results[how] = jax.device_get(s.step_fn(state, s.first_batch))
    chex.assert_trees_all_close(results["scan"], results["unrolled"], rtol=1e-5, atol=1e-6)


def test_chunk_loop_is_checked():
    config = config_lib.load(SMOKE, ["train.chunk_loop=python"])
    with pytest.raises(config_lib.ConfigError, match="train.chunk_loop='python'"):
        convirt.ConVIRT(config, parallel.make_mesh(jax.devices()[:1]))


def test_grad_cache_chunks_must_divide_the_batch():
    config = config_lib.load(SMOKE, ["train.grad_cache_chunks=3"])
    with pytest.raises(config_lib.ConfigError, match="grad_cache_chunks=3"):
        convirt.ConVIRT(config, parallel.make_mesh(jax.devices()[:1]))


def test_each_example_draws_one_of_its_sentences(smoke):
    _, method, _ = smoke
    tokens = np.zeros((4, 24), np.int32)
    tokens[:, 0] = [11, 12, 13, 14]  # Sentence k starts with id 11 + k; the 4th is beyond num_sentences.
    tokens[:, 1] = 3
    example = {"image": tf.zeros((32, 32, 1), tf.uint8), "tokens": tf.constant(tokens),
               "num_sentences": tf.constant(3, tf.int32)}
    firsts = []
    for g in range(60):
        out = method.preprocess_train({**example, "seed": tf.constant([0, g], tf.int64)})
        firsts.append(int(out["input_ids"][0]))
        np.testing.assert_array_equal(out["attention_mask"], (tokens[0] != 0).astype(np.int32))
        assert out["image"].shape == (32, 32, 1)
    assert set(firsts) == {11, 12, 13}
    again = method.preprocess_train({**example, "seed": tf.constant([0, 5], tf.int64)})
    assert int(again["input_ids"][0]) == firsts[5]


def test_source_without_text_is_a_clear_error(smoke, tmp_path):
    _, method, _ = smoke
    image_folder(tmp_path)
    examples = sources.load(data_spec("nih1000", tmp_path, "train"), image_size=32, seed=0)
    with pytest.raises(sources.DataError, match="'nih1000' has no image–text pairs"):
        convirt.paired_examples(examples, method.tokenizer, method.config.text, "nih1000")


@pytest.mark.slow
def test_towers_start_from_imported_weights(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from cxr_jax.data import phantom, text
    from tests.test_weights import _randomised, _ResNet50

    torch.save(_randomised(_ResNet50()).state_dict(), tmp_path / "resnet50.pth")
    vocab = text.train_vocab(phantom.generate(16, image_size=32, seed=0)["text"], vocab_size=80)
    bert_dir = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=32)).save_pretrained(bert_dir)
    (bert_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = config_lib.load(SMOKE, [f"model.image_weights={tmp_path / 'resnet50.pth'}",
                                     f"model.text_weights={bert_dir}"])
    mesh = parallel.make_mesh(jax.devices()[:1])
    method = convirt.ConVIRT(config, mesh)
    assert method.tokenizer.vocab == vocab
    s = loop.setup(config, mesh=mesh, method=method)
    state = method.load_pretrained(s.init_fn(jax.random.key(0), s.first_batch))
    pairs = (("image_encoder", "params"), ("text_encoder", "params"), ("image_encoder", "batch_stats"))
    for tower, collection in pairs:
        got = (state.params["model"] if collection == "params" else state.model_state["batch_stats"])[tower]
        want = method.pretrained[tower][collection]
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(x), y)
    assert state.params["model"]["image_encoder"]["conv1"]["kernel"].shape == (7, 7, 1, 64)  # Gray input.
    state, metrics = s.step_fn(state, s.first_batch)
    assert np.isfinite(metrics["loss"])


@pytest.mark.slow  # ~70 s of compiles; keeps the CI run under 15 minutes.
def test_gradient_caching_shrinks_the_step_memory_plan():
    from cxr_jax import bench

    plain = bench.run(config_lib.load(SMOKE, ["batch_size=64"]), compile_only=True)
    # Measured: 8.0 MiB of temporaries plain; in 8 micro-batches 1.8 MiB scanned, 4.8 MiB written out (each
    # micro-batch behind an optimization barrier; the plan held every micro-batch without it). At the paper's
    # size (batch 64 in 4) the two loops plan 4.6 and 5.3 GB, plain 15.3 GB.
    for how, most in (("scan", 0.35), ("unrolled", 0.75)):
        cached = bench.run(config_lib.load(SMOKE, ["batch_size=64", "train.grad_cache_chunks=8",
                                                   f"train.chunk_loop={how}"]), compile_only=True)
        assert cached["xla_temp_memory_mb"] < most * plain["xla_temp_memory_mb"], (how, cached, plain)


def test_head_batch_norm_keeps_running_statistics_of_both_heads():
    config = config_lib.load(SMOKE, ["model.head_batch_norm=True"])
    mesh = parallel.make_mesh(jax.devices()[:1])
    s = loop.setup(config, mesh=mesh, method=convirt.ConVIRT(config, mesh))
    state = s.init_fn(jax.random.key(0), s.first_batch)
    before = jax.device_get(state.model_state["batch_stats"])
    state, metrics = s.step_fn(state, s.first_batch)
    after = jax.device_get(state.model_state["batch_stats"])
    assert np.isfinite(metrics["loss"])
    # Momentum 0.9: each running mean moved a tenth of the way to its batch mean (the ResNet's too).
    for tower in (("image_head", "norm"), ("text_head", "norm"), ("image_encoder", "bn1")):
        x, y = before, after
        for key in tower:
            x, y = x[key], y[key]
        assert not np.allclose(x["mean"], y["mean"]), tower

"""The vocabulary belongs to the run: written to W/vocab.txt by training, read back by every later command."""

import shutil

import jax
import pytest

from cxr_jax import checkpoint, parallel, runs
from cxr_jax import config as config_lib
from cxr_jax.cli import main
from cxr_jax.data import text
from cxr_jax.methods.convirt import trainer as convirt
from cxr_jax.train import loop
from tests.conftest import ROOT

SMOKE = f"{ROOT / 'configs' / 'convirt.py'}:smoke"
# Smaller towers than smoke's: each train compiles in about half the time.
TINY = ["model.image.stage_sizes=(1,)", "model.image.width=4", "model.text.num_layers=1", "model.text.frozen_layers=0",
        "optim.warmup_steps=1"]
# The run's corpus and vocabulary differ from smoke's (200 tokens), as `demo` trained on covid (291) from demo's (2000).
RUN_TEXT = ["text.corpus.num_examples=32", "text.vocab_size=120"]


def _config(*overrides):
    return config_lib.load(SMOKE, [*TINY, *overrides])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step tiny ConVIRT run whose 120-token vocabulary was trained on its own corpus."""
    workdir = tmp_path_factory.mktemp("convirt_run")
    loop.train(_config(*RUN_TEXT, "train.num_steps=2", "train.checkpoint_every=2"), workdir)
    return workdir


def _word_embeddings(state):
    return state.params["model"]["text_encoder"]["word_embeddings"]["embedding"]


def test_training_writes_the_vocabulary_into_the_run(run):
    trained = convirt.load_tokenizer(_config(*RUN_TEXT).text, image_size=32, seed=0)
    assert text.Tokenizer.from_file(run / "vocab.txt").vocab == trained.vocab
    assert len(trained.vocab) == 120
    assert not list(run.glob(".vocab.txt.*"))  # Written atomically: no temporary left behind.


def test_evaluate_with_another_corpus_uses_the_runs_vocabulary(run):
    """The reproduction: a config whose corpus gives another vocabulary (here 200 tokens) still restores the run."""
    config = _config()
    assert len(convirt.load_tokenizer(config.text, image_size=32, seed=0).vocab) == 200
    method, state, step = runs.restore_method(config, run, parallel.make_mesh(jax.devices()[:1]))
    assert step == 2 and len(method.tokenizer.vocab) == 120 and _word_embeddings(state).shape[0] == 120
    assert method.tokenizer.vocab == text.Tokenizer.from_file(run / "vocab.txt").vocab


def test_a_conflicting_vocab_file_is_one_line_and_exit_2(run, tmp_path, capsys):
    other = tmp_path / "other.txt"
    text.Tokenizer([*text.SPECIALS, "heart"]).save(other)
    with pytest.raises(SystemExit) as exited:
        main.main(["evaluate", "--config", SMOKE, "--workdir", str(run), *(f"--config.{o}" for o in TINY),
                   f"--config.text.vocab_file={other}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err  # Its last line (absl may log Orbax's read-only notices before it).
    assert "Traceback" not in err and err.splitlines()[-1] == (
        f"cxr-jax evaluate: error: text.vocab_file asks for {other} (6 tokens) but the run was trained with "
        f"{run / 'vocab.txt'} (120 tokens); leave text.vocab_file unset to use the run's")


def test_an_explicit_vocab_file_must_be_the_runs_token_for_token(run, tmp_path):
    stored = text.Tokenizer.from_file(run / "vocab.txt").vocab
    same, swapped = tmp_path / "same.txt", tmp_path / "swapped.txt"
    text.Tokenizer(stored).save(same)
    text.Tokenizer([*stored[:-2], stored[-1], stored[-2]]).save(swapped)
    assert convirt.run_tokenizer(run / "vocab.txt", str(same)).vocab == stored
    with pytest.raises(config_lib.ConfigError, match="120 tokens, not all the same or in order"):
        convirt.run_tokenizer(run / "vocab.txt", str(swapped))


def test_a_run_without_vocab_txt_keeps_working_and_a_mismatch_is_one_line(run, tmp_path, capsys):
    old = tmp_path / "old"  # As trained before runs kept their vocabulary.
    shutil.copytree(run, old)
    (old / "vocab.txt").unlink()
    mesh = parallel.make_mesh(jax.devices()[:1])
    method, state, _ = runs.restore_method(_config(*RUN_TEXT), old, mesh)  # Its own config: as before.
    assert _word_embeddings(state).shape[0] == 120
    with pytest.raises(SystemExit) as exited:  # Another corpus: the checkpoint cannot hold 200 tokens.
        main.main(["evaluate", "--config", SMOKE, "--workdir", str(old), *(f"--config.{o}" for o in TINY)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    line = err.splitlines()[-1]
    assert "Traceback" not in err
    assert line.startswith(f"cxr-jax evaluate: error: checkpoint {old / 'checkpoints' / '2'} does not match "
                           "this config's model and optimizer: "), line
    assert "word_embeddings/embedding ((120, 16), 'float32') vs ((200, 16), 'float32')" in line, line


def test_resume_uses_the_stored_vocabulary(run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    stored = (workdir / "vocab.txt").read_text()
    # The config's corpus now gives 200 tokens (a change allow_changes lets through); the run's 120 carry on.
    loop.train(_config("allow_changes=True", "train.num_steps=3", "train.checkpoint_every=3"), workdir)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", read_only=True)
    assert ckpt.latest_step() == 3
    ckpt.close()
    assert (workdir / "vocab.txt").read_text() == stored

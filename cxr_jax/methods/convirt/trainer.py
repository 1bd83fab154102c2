"""ConVIRT pretraining: two towers, one random report sentence per image per step, global-batch InfoNCE.

The loss runs in `shard_map`: each device scores its rows against the embeddings gathered from every device
and host (`methods.convirt.losses`). With `train.grad_cache_chunks = k` the step computes the same full-batch
loss and gradients in k micro-batches (gradient caching, Gao et al. 2021):
  1. embed every micro-batch without keeping activations;
  2. take the loss and its gradient with respect to the embeddings (and τ) on the whole batch;
  3. re-run each micro-batch forward with a VJP, pulling back its slice of that gradient, and sum.
Only one micro-batch's activations are alive at a time, so the batch that fits grows by k. Each micro-batch
spans every device (rows j·k + c), and its BatchNorm statistics are the micro-batch's, as in any micro-batched
run; `loss(..., num_chunks=k)` is the function whose exact gradient the cached step computes.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec

from cxr_jax import parallel, weights
from cxr_jax.config import ConfigError
from cxr_jax.data import sources, text
from cxr_jax.methods.convirt import losses as contrastive
from cxr_jax.methods.convirt import model as convirt_model
from cxr_jax.models import bert, resnet
from cxr_jax.train import state as state_lib
from cxr_jax.train.method import Method

VOCAB_FILE = "vocab.txt"  # The run's vocabulary, W/vocab.txt (`read_run`, `write_run`).
CHUNK_LOOPS = ("auto", "scan", "unrolled")  # train.chunk_loop: how micro-batches are looped (`_chunk_loop`).


class ConVIRT(Method):
    """Image–report contrastive pretraining of a ResNet and a BERT with Adam (PyTorch-style L2)."""

    key_metrics = ("loss", "batch_retrieval_accuracy", "temperature")

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
        self.config = config
        self.mesh = mesh or parallel.make_mesh()
        chunks = config.train.grad_cache_chunks
        if chunks and config.batch_size % (chunks * self.mesh.devices.size):
            raise ConfigError(f"batch_size={config.batch_size} must split into train.grad_cache_chunks={chunks} "
                              f"micro-batches of whole rows on each of {self.mesh.devices.size} devices")
        if config.train.chunk_loop not in CHUNK_LOOPS:
            raise ConfigError(f"train.chunk_loop={config.train.chunk_loop!r}: expected one of {', '.join(CHUNK_LOOPS)}")
        self.run_vocab: pathlib.Path | None = None  # The vocabulary of the run being restored (`read_run`).
        self.schedule = state_lib.warmup_cosine(config.optim, config.train.num_steps)
        adam = optax.chain(optax.add_decayed_weights(config.optim.weight_decay), optax.adam(self.schedule))
        self.tx = {"model": optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()},
                                                  functools.partial(_labels, text_cfg=config.model.text))}

    # --- The run's vocabulary ----------------------------------------------------------------------------------

    def read_run(self, workdir: pathlib.Path) -> None:
        """Takes the vocabulary from the run's `W/vocab.txt` (a run trained before it was written has none)."""
        if "tokenizer" in vars(self):
            raise RuntimeError("read_run must come before the tokenizer is used (registry.build calls it)")
        path = workdir / VOCAB_FILE
        self.run_vocab = path if path.is_file() else None

    def write_run(self, workdir: pathlib.Path) -> None:
        """Writes the tokenizer's vocabulary to `W/vocab.txt`: every later command on the run reads it."""
        self.tokenizer.save(workdir / VOCAB_FILE)

    @functools.cached_property
    def tokenizer(self) -> text.Tokenizer:
        """The run's vocabulary when restoring one (`read_run`), else the config's (`load_tokenizer`)."""
        text_cfg, m = self.config.text, self.config.model
        setting = "text.vocab_file"
        if m.text_weights and not text_cfg.vocab_file:
            text_cfg = ml_collections.ConfigDict({**text_cfg.to_dict(), "vocab_file": f"{m.text_weights}/vocab.txt"})
            setting = "model.text_weights"
        if self.run_vocab is not None:
            return run_tokenizer(self.run_vocab, text_cfg.vocab_file, setting)
        return load_tokenizer(text_cfg, image_size=self.config.image_size, seed=self.config.seed)

    @functools.cached_property
    def _towers(self) -> tuple[convirt_model.ConVIRT, dict]:
        """The model, its text embeddings sized by the tokenizer, and any pretrained tower variables."""
        m = self.config.model
        dtype = jnp.bfloat16 if self.config.mixed_precision else jnp.float32
        image_encoder, text_encoder, pretrained = _encoders(m, vocab_size=len(self.tokenizer.vocab), dtype=dtype)
        model = convirt_model.ConVIRT(
            image_encoder=image_encoder, text_encoder=text_encoder, embed_dim=m.embed_dim,
            image_hidden_dim=m.image_hidden_dim, text_hidden_dim=m.text_hidden_dim, temperature_init=m.temperature,
            learn_temperature=m.learn_temperature, head_batch_norm=m.head_batch_norm, dtype=dtype)
        return model, pretrained

    @property
    def model(self) -> convirt_model.ConVIRT:
        """The two towers and their projection heads (built on first use, after `read_run`)."""
        return self._towers[0]

    @property
    def pretrained(self) -> dict:
        """{tower: variables} imported from `model.image_weights` / `model.text_weights`."""
        return self._towers[1]

    # --- Data ------------------------------------------------------------------------------------------------

    def train_data(self):
        """Images (or files) with each report's sentences as token ids, and the per-example preprocessing."""
        spec = self.config.data.train
        examples = sources.load(spec, image_size=self.config.image_size, seed=self.config.seed)
        return paired_examples(examples, self.tokenizer, self.config.text, spec.source), self.preprocess_train

    def preprocess_train(self, example):
        """The paper's image view in [-1, 1] and one random sentence of the report."""
        import tensorflow as tf  # Only where data is built (see `train.method`).

        from cxr_jax.data import augment

        image_seed, text_seed = tf.unstack(augment.split_seed(example["seed"], 2))
        image = augment.convirt_view(augment.to_unit(example["image"]), image_seed, self.config.augment)
        pick = tf.random.stateless_uniform([], text_seed, 0, example["num_sentences"], dtype=tf.int32)
        ids = tf.gather(example["tokens"], pick)
        return {"image": image * 2.0 - 1.0, "input_ids": ids,
                "attention_mask": tf.cast(ids != self.tokenizer.pad_id, tf.int32)}

    def synthetic_batch(self, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Random [-1, 1] images and a sentence per row: [CLS], 1 to max_length − 2 random words, [SEP], padding."""
        rng = np.random.default_rng(seed)
        size, length, tokenizer = self.config.image_size, self.config.text.max_length, self.tokenizer
        words = np.setdiff1d(np.arange(len(tokenizer.vocab)), [tokenizer.ids[t] for t in text.SPECIALS
                                                               if t in tokenizer.ids])
        ids = np.full((batch_size, length), tokenizer.pad_id, np.int32)
        for row, n in enumerate(rng.integers(1, length - 2, batch_size, endpoint=True)):
            ids[row, :n + 2] = [tokenizer.cls_id, *rng.choice(words, n), tokenizer.sep_id]
        return {"image": rng.uniform(-1.0, 1.0, (batch_size, size, size, 1)).astype(np.float32), "input_ids": ids,
                "attention_mask": (ids != tokenizer.pad_id).astype(np.int32)}

    # --- Model -----------------------------------------------------------------------------------------------

    def evaluate(self, state: state_lib.TrainState, mesh, outdir) -> dict[str, float]:
        """See `cxr_jax.methods.convirt.evaluate` (imported here: training needs none of its plotting)."""
        from cxr_jax.methods.convirt import evaluate

        return evaluate.evaluate(self, state, mesh, outdir)

    def init(self, rng: jax.Array, batch) -> state_lib.TrainState:
        """Parameters for images shaped like `batch['image']` (the text shape comes from the config)."""
        ids = jnp.zeros((batch["image"].shape[0], self.config.text.max_length), jnp.int32)
        variables = self.model.init({"params": rng, "dropout": rng}, batch["image"], ids, jnp.ones_like(ids))
        return state_lib.TrainState.create({"model": variables["params"]}, self.tx,
                                           {"batch_stats": dict(variables["batch_stats"])})

    def load_pretrained(self, state: state_lib.TrainState) -> state_lib.TrainState:
        """`state` with the towers imported from `model.image_weights` / `model.text_weights` (fresh runs)."""
        params, stats = dict(state.params["model"]), dict(state.model_state["batch_stats"])
        for tower, variables in self.pretrained.items():
            params[tower] = _like(variables["params"], params[tower], tower)
            if "batch_stats" in variables:
                stats[tower] = _like(variables["batch_stats"], stats[tower], tower)
        return state.replace(params={**state.params, "model": params},
                             model_state={**state.model_state, "batch_stats": stats})

    def train_step(self, state: state_lib.TrainState, batch):
        """One Adam step on the global batch's InfoNCE (gradient-cached when configured)."""
        rng = state_lib.step_rng(self.config.seed, state.step)
        params, chunks = state.params["model"], self.config.train.grad_cache_chunks
        if chunks:
            (loss, aux), grads = self.cached_value_and_grad(params, state.model_state, batch, rng, chunks)
        else:
            (loss, aux), grads = jax.value_and_grad(self.loss, has_aux=True)(params, state.model_state, batch, rng)
        new_state = state.apply_gradients("model", grads, self.tx["model"])
        new_state = new_state.replace(step=state.step + 1, model_state=aux["model_state"])
        metrics = {"loss": loss, "temperature": aux["temperature"], "learning_rate": self.schedule(state.step),
                   "batch_retrieval_accuracy": contrastive.retrieval_accuracy(image=aux["image"], text=aux["text"]),
                   **state_lib.norms(params, grads)}
        return new_state, metrics

    def loss(self, params, model_state, batch, rng, num_chunks: int = 1):
        """The batch's InfoNCE with both towers run in `num_chunks` micro-batches; aux holds the embeddings."""
        image, text_emb, model_state = self._embed(params, model_state, batch, rng, num_chunks)
        temperature = self.model.apply({"params": params}, method="temperature")
        aux = {"image": image, "text": text_emb, "temperature": temperature, "model_state": model_state}
        return self.info_nce(image, text_emb, temperature), aux

    def cached_value_and_grad(self, params, model_state, batch, rng, num_chunks: int):
        """`jax.value_and_grad(self.loss, has_aux=True)` at `num_chunks`, holding one micro-batch at a time."""
        image, text_emb, new_model_state = self._embed(params, model_state, batch, rng, num_chunks)
        temperature, temperature_vjp = jax.vjp(lambda p: self.model.apply({"params": p}, method="temperature"),
                                               params)
        loss, (g_image, g_text, g_temperature) = jax.value_and_grad(self.info_nce, argnums=(0, 1, 2))(
            image, text_emb, temperature)

        def pull_back(grads, xs):
            chunk, index, g_chunk = xs
            embed = lambda p: self._embed_chunk(p, model_state, chunk, jax.random.fold_in(rng, index))[:2]  # noqa: E731
            return jax.tree.map(jnp.add, grads, jax.vjp(embed, params)[1](g_chunk)[0]), None

        xs = (_chunks(batch, num_chunks), jnp.arange(num_chunks), _chunks((g_image, g_text), num_chunks))
        grads, _ = self._chunk_loop(pull_back, temperature_vjp(g_temperature)[0], xs)
        aux = {"image": image, "text": text_emb, "temperature": temperature, "model_state": new_model_state}
        return (loss, aux), grads

    def info_nce(self, image, text_emb, temperature):
        """The global-batch loss: `contrastive.info_nce` in shard_map over the mesh's 'data' axis."""
        rows = PartitionSpec(parallel.DATA_AXIS)
        loss = jax.shard_map(
            lambda i, t, tau: contrastive.info_nce(image=i, text=t, temperature=tau,
                                                   image_weight=self.config.model.image_weight,
                                                   axis_name=parallel.DATA_AXIS),
            mesh=self.mesh, in_specs=(rows, rows, PartitionSpec()), out_specs=PartitionSpec())
        return loss(image, text_emb, temperature)

    def _embed(self, params, model_state, batch, rng, num_chunks: int):
        """Both towers over the batch, one micro-batch after another; BatchNorm statistics carried."""
        def body(model_state, xs):
            chunk, index = xs
            image, text_emb, model_state = self._embed_chunk(params, model_state, chunk,
                                                             jax.random.fold_in(rng, index))
            return model_state, (image, text_emb)

        model_state, (image, text_emb) = self._chunk_loop(
            body, model_state, (_chunks(batch, num_chunks), jnp.arange(num_chunks)))
        return _unchunk(image), _unchunk(text_emb), model_state

    def _chunk_loop(self, body, carry, xs):
        """`jax.lax.scan(body, carry, xs)`, or the same written out in Python (`train.chunk_loop`).

        XLA:CPU runs convolutions inside a while loop many times slower than outside one (jax-ml/jax#12868: its
        layout pass skips loop bodies; docs/performance.md), so `auto` traces the micro-batches one after
        another on CPU meshes and for a single chunk; accelerators keep the scan. Written out, each micro-batch
        passes an optimization barrier with the carry so far, so XLA cannot start it before the previous one has
        finished and the memory plan stays near the scan's (without the barrier XLA:CPU scheduled every
        recomputed forward pass first and the plan held them all; docs/performance.md has both).
        """
        length, how = jax.tree.leaves(xs)[0].shape[0], self.config.train.chunk_loop
        if length > 1 and (how == "scan" or how == "auto" and self.mesh.devices.flat[0].platform != "cpu"):
            return jax.lax.scan(body, carry, xs)
        outputs = []
        for index in range(length):
            x = jax.tree.map(lambda a, i=index: a[i], xs)
            if length > 1:
                carry, x = jax.lax.optimization_barrier((carry, x))
            carry, out = body(carry, x)
            outputs.append(out)
        return carry, jax.tree.map(lambda *o: jnp.stack(o), *outputs)

    def _embed_chunk(self, params, model_state, chunk, rng):
        """Image and text embeddings of one micro-batch (train mode) and the updated BatchNorm statistics."""
        chunk = jax.lax.with_sharding_constraint(chunk, parallel.batch_sharding(self.mesh))
        variables = {"params": params, **model_state}
        image, updates = self.model.apply(variables, chunk["image"], train=True, method="embed_images",
                                          mutable=["batch_stats"])
        variables = {**variables, **updates}  # The text pass returns the whole collection, image part included.
        text_emb, updates = self.model.apply(variables, chunk["input_ids"], chunk["attention_mask"], train=True,
                                             method="embed_text", rngs={"dropout": rng}, mutable=["batch_stats"])
        return image, text_emb, {**model_state, **updates}

    def image_features(self, state: state_lib.TrainState, batch) -> jax.Array:
        """Inference: the image encoder's pooled features (what linear probes and fine-tuning start from)."""
        return self.model.apply({"params": state.params["model"], **state.model_state}, batch["image"],
                                method=lambda m, x: m.image_encoder(x, train=False)).astype(jnp.float32)

    def embed_images(self, state: state_lib.TrainState, batch) -> jax.Array:
        """Inference: image embeddings [B, d] in float32."""
        return self.model.apply({"params": state.params["model"], **state.model_state}, batch["image"],
                                method="embed_images")

    def embed_text(self, state: state_lib.TrainState, batch) -> jax.Array:
        """Inference: text embeddings [B, d] in float32."""
        return self.model.apply({"params": state.params["model"], **state.model_state}, batch["input_ids"],
                                batch["attention_mask"], method="embed_text")


def _encoders(m: ml_collections.ConfigDict, *, vocab_size: int, dtype):
    """The image and text encoders from `config.model`, and any pretrained variables {tower: variables}."""
    pretrained = {}
    image_encoder = resnet.ResNet(tuple(m.image.stage_sizes), m.image.block, m.image.width, 0, dtype=dtype)
    if m.image_weights:
        module, pretrained["image_encoder"] = weights.load_resnet50(m.image_weights, in_channels=1)
        image_encoder = module.clone(dtype=dtype)
    text_fields = {k: v for k, v in m.text.items()}
    text_encoder = bert.Bert(vocab_size=vocab_size, **text_fields, dtype=dtype)
    if m.text_weights:
        freeze = {k: text_fields[k] for k in ("freeze_embeddings", "frozen_layers", "dropout")}
        module, pretrained["text_encoder"] = weights.load_bert(m.text_weights, **freeze, dtype=dtype)
        if module.vocab_size != vocab_size:
            raise ConfigError(f"model.text_weights={m.text_weights!r} has {module.vocab_size} token embeddings but "
                              f"the vocabulary has {vocab_size} tokens; use the directory's own vocab.txt")
        text_encoder = module
    return image_encoder, text_encoder, pretrained


def run_tokenizer(run_vocab: pathlib.Path, vocab_file: str | None, setting: str = "text.vocab_file") -> text.Tokenizer:
    """The vocabulary a run was trained with; a `vocab_file` the config asks for (by `setting`) must be it.

    Without one, the run's wins over the config's `text.corpus` (the checkpoints' token embeddings are the run's).
    """
    stored = text.Tokenizer.from_file(run_vocab)
    if vocab_file:
        asked = text.Tokenizer.from_file(vocab_file)
        if asked.vocab != stored.vocab:
            size = len(asked.vocab)
            what = f"{size} tokens" if size != len(stored.vocab) else f"{size} tokens, not all the same or in order"
            hint = ("leave text.vocab_file unset to use the run's" if setting == "text.vocab_file"
                    else "point model.text_weights at the weights the run started from")
            raise ConfigError(f"{setting} asks for {vocab_file} ({what}) but the run was trained with {run_vocab} "
                              f"({len(stored.vocab)} tokens); {hint}")
    return stored


def load_tokenizer(text_cfg: ml_collections.ConfigDict, *, image_size: int, seed: int) -> text.Tokenizer:
    """From `text.vocab_file`, or a WordPiece vocabulary trained on the `text.corpus` reports."""
    if text_cfg.vocab_file:
        return text.Tokenizer.from_file(text_cfg.vocab_file)
    return text.Tokenizer(_trained_vocab(text_cfg.corpus.to_json(), text_cfg.vocab_size, image_size, seed))


@functools.cache
def _trained_vocab(corpus_json: str, vocab_size: int, image_size: int, seed: int) -> tuple[str, ...]:
    spec = ml_collections.ConfigDict(json.loads(corpus_json))
    corpus = sources.load(spec, image_size=image_size, seed=seed)
    if "text" not in corpus:
        raise sources.DataError(f"text.corpus source {spec.source!r} has no report text to train a vocabulary on")
    return tuple(text.train_vocab(corpus["text"], vocab_size=vocab_size))


def paired_examples(examples: dict, tokenizer: text.Tokenizer, text_cfg: ml_collections.ConfigDict,
                    source: str) -> dict[str, np.ndarray]:
    """`image` (or `file`), each report's sentences as `tokens` [N, S, T] and `num_sentences` [N]."""
    key = "image" if "image" in examples else "file"
    if key not in examples or "text" not in examples:
        raise sources.DataError(f"data source {source!r} has no image–text pairs (ConVIRT needs both)")
    if text_cfg.unit not in ("sentence", "report"):
        raise ConfigError(f"text.unit={text_cfg.unit!r}; expected 'sentence' or 'report'")
    tokens, counts = text.encode_sentences(tokenizer, list(examples["text"]), max_length=text_cfg.max_length,
                                           max_sentences=text_cfg.max_sentences, whole=text_cfg.unit == "report")
    return {key: examples[key], "tokens": tokens, "num_sentences": counts}


def _labels(params, *, text_cfg):
    """'frozen' on the text encoder's frozen embeddings and layers, 'train' everywhere else."""
    labels = jax.tree.map(lambda _: "train", params)
    frozen = bert.frozen_mask(params["text_encoder"], freeze_embeddings=text_cfg.freeze_embeddings,
                              frozen_layers=text_cfg.frozen_layers)
    labels["text_encoder"] = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
    return labels


def _like(imported, current, tower: str):
    """Imported arrays placed (and typed) like the freshly initialised ones they replace."""
    if jax.tree.structure(imported) != jax.tree.structure(current):
        raise ConfigError(f"pretrained {tower} does not match the model's parameter tree")
    return jax.tree.map(lambda new, old: jax.device_put(np.asarray(new, old.dtype), old.sharding), imported, current)


def _chunks(tree, num: int):
    """[B, ...] → [num, B / num, ...] with micro-batch c = rows j·num + c, so each spans every device."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1), tree)


def _unchunk(x):
    """The inverse of `_chunks` for one array."""
    return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])

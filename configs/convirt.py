r"""ConVIRT: image–report contrastive pretraining (Zhang et al., MLHC 2022).

Variants:
  smoke:  seconds; tiny towers on 32 px phantom image–report pairs (tests).
  demo:   ~28 minutes on one CPU core; ResNet-10 and a 2-layer BERT on 64 px phantom image–report pairs, one
          sentence per step.
  covid:  the demo towers on ../shared/data/covid (radiographs with their clinical notes).
  paper:  ResNet-50 and BERT-base (embeddings and 6 layers frozen) at 224 px, batch 32, τ 0.1, λ 0.75,
          Adam 1e-4 with L2 1e-6; set text.vocab_file to a BERT/ClinicalBERT vocab.txt.
  large:  the paper towers at a global batch of 4096, gradient caching in 16 micro-batches.

Run:
  cxr-jax train --config configs/convirt.py:demo --workdir workdirs/convirt
  cxr-jax evaluate --config configs/convirt.py:demo --workdir workdirs/convirt
"""

import ml_collections

from configs import common


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    """Returns the ConVIRT config for variant `arg` (smoke, demo, covid, paper, large)."""
    return common.apply_variant(_base(), VARIANTS, arg)


def _base() -> ml_collections.ConfigDict:
    """The keys and defaults every variant starts from."""
    c = common.base("convirt")
    c.model = ml_collections.ConfigDict()
    c.model.image = ml_collections.ConfigDict(dict(stage_sizes=(1, 1, 1, 1), block="basic", width=32))
    c.model.text = ml_collections.ConfigDict(dict(
        hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512, max_positions=128, dropout=0.1,
        freeze_embeddings=False, frozen_layers=0))
    c.model.embed_dim = 512  # d of the shared space.
    c.model.image_hidden_dim = 256  # Projection heads' hidden width (paper: the encoder's output width).
    c.model.text_hidden_dim = 128
    c.model.temperature = 0.1  # τ.
    c.model.learn_temperature = False  # Learn τ (CLIP's log 1/τ parameter, clipped at 1/τ = 100).
    c.model.head_batch_norm = False  # BatchNorm in the projection heads (keeps random towers from collapsing).
    c.model.image_weight = 0.75  # λ, the weight of the image→text direction.
    # Pretrained towers from local files (they fix the tower's architecture; model.image/text sizes then unused):
    c.model.image_weights = None  # A torchvision ResNet-50 state dict (.safetensors, .pth).
    c.model.text_weights = None  # A Hugging Face BERT directory; its vocab.txt is used unless text.vocab_file.

    c.text = ml_collections.ConfigDict()
    # A BERT-style vocab.txt; None: train a WordPiece vocabulary on `text.corpus`. A trained run keeps the one it
    # used in W/vocab.txt, and evaluate, retrieve, a resume and init_from read it from there.
    c.text.vocab_file = None
    c.text.vocab_size = 2000
    c.text.corpus = common.data_spec("phantom", "train")  # Report texts the vocabulary is trained on.
    c.text.corpus.num_examples = 2000
    c.text.max_length = 64  # Tokens per sentence, [CLS] and [SEP] included.
    c.text.max_sentences = 16  # Sentences kept per report; one is drawn per example per step.
    c.text.unit = "sentence"  # What a training text is: one random sentence (paper) or the whole "report".

    # The paper's ranges (Zhang et al. 2022, Sec. 3.3 / their torchvision pipeline); crops keep the input's size.
    c.augment = ml_collections.ConfigDict(dict(
        crop_area=(0.6, 1.0), flip=0.5, degrees=20.0, translate=0.1, scale=(0.95, 1.05),
        brightness=(0.6, 1.4), contrast=(0.6, 1.4), blur_sigma=(0.1, 3.0),
        blur_reference_size=224))  # blur_sigma is in pixels of an image this wide; scaled to the input.

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 20
    c.optim.weight_decay = 1e-6  # L2 added to the gradient before Adam, as torch.optim.Adam(weight_decay=…).

    c.train.grad_cache_chunks = 0  # 0: plain backprop; k: exact gradients computed in k micro-batches.
    # How the k micro-batches are looped: auto = written out on CPU (XLA:CPU runs convolutions in a while loop
    # many times slower), lax.scan on accelerators; or "scan" / "unrolled" everywhere.
    c.train.chunk_loop = "auto"

    c.data.train.num_examples = 1024
    c.data.eval.num_examples = 256

    # Linear probes (normal vs abnormal) on the frozen image encoder, each also from a random encoder.
    c.probe = ml_collections.ConfigDict()
    c.probe.train = common.data_spec("phantom", "test")  # Phantom: a split the pretraining never saw.
    c.probe.eval = common.data_spec("phantom", "valid")
    c.probe.train.num_examples, c.probe.eval.num_examples = 1024, 256
    c.probe.fractions = (0.01, 0.1, 1.0)  # Of the labelled probe.train examples.
    c.probe.seeds = 3  # Seeded subsets averaged below 100%.
    c.probe.inverse_l2 = 1.0  # Logistic regression's C (sklearn).
    c.probe.finetune_steps = 100  # Adam steps of batch_size images per fine-tuning run; 0: no fine-tuning.
    c.probe.finetune_learning_rate = 1e-4  # The paper's fine-tuning rate.

    # Category retrieval in the CheXpert 8×200 format (cxr_jax/data/retrieval_sets.py); `cxr-jax data
    # retrieval-set` writes one from a labelled source. Paths relative to `root` (default: the CSV's folder).
    c.retrieval = ml_collections.ConfigDict(dict(candidates=None, image_queries=None, text_queries=None, root=None))
    c.eval.best_metric, c.eval.best_mode = "t2i_recall_at_10", "max"  # Report → image recall@10 on data.eval.
    return c


def _smoke(c: ml_collections.ConfigDict) -> None:
    common.smoke(c)
    c.model.image.width = 8
    c.model.text = ml_collections.ConfigDict(dict(
        hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=32, dropout=0.1,
        freeze_embeddings=True, frozen_layers=1))
    c.model.embed_dim, c.model.image_hidden_dim, c.model.text_hidden_dim = 16, 32, 16
    c.text.vocab_size, c.text.corpus.num_examples, c.text.max_length = 200, 64, 24
    c.optim.warmup_steps = 2
    c.probe.train.num_examples, c.probe.eval.num_examples = 64, 32
    c.probe.finetune_steps = 3


def _demo(c: ml_collections.ConfigDict) -> None:
    # One random sentence per step, as the paper. From random towers this small run otherwise collapses to one
    # text embedding (loss stuck at ln 32): BatchNorm in the heads, and no crop or affine (the paper's
    # photometric jitter and blur stay). No flips: phantom reports name the side of each finding.
    c.model.head_batch_norm = True
    c.augment.crop_area, c.augment.degrees, c.augment.translate, c.augment.scale = (1.0, 1.0), 0.0, 0.0, (1.0, 1.0)
    c.augment.flip = 0.0
    # 3000 steps, chosen over 2000 on the valid pairs' retrieval (docs/convirt.md).
    c.train.num_steps, c.train.log_every, c.train.checkpoint_every = 3000, 50, 500
    # eval.every stays 0: an evaluation (probes and 1400 fine-tuning steps) took 238 s against 100 steps' 28 s.


def _covid(c: ml_collections.ConfigDict) -> None:
    common.shared(c.data.train, "covid", "train")
    common.shared(c.data.eval, "covid", "valid")
    common.shared(c.text.corpus, "covid", "train")
    _probe_on_nih1000(c)
    c.model.head_batch_norm = True  # Random towers (see demo).
    c.batch_size = 16
    c.train.num_steps, c.train.log_every, c.train.checkpoint_every = 400, 20, 100


def _paper(c: ml_collections.ConfigDict) -> None:
    c.image_size = 224
    c.model.image = ml_collections.ConfigDict(dict(stage_sizes=(3, 4, 6, 3), block="bottleneck", width=64))
    c.model.text = ml_collections.ConfigDict(dict(
        hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, max_positions=512, dropout=0.1,
        freeze_embeddings=True, frozen_layers=6))
    c.model.image_hidden_dim, c.model.text_hidden_dim = 2048, 768
    c.text.vocab_size, c.text.max_length = 30522, 128
    common.shared(c.text.corpus, "iu_reports")  # Or set text.vocab_file to BERT's vocab.txt.
    _probe_on_nih1000(c)
    c.optim.learning_rate, c.optim.warmup_steps = 1e-4, 500
    c.train.num_steps, c.train.log_every, c.train.checkpoint_every = 20000, 100, 1000


def _large(c: ml_collections.ConfigDict) -> None:
    _paper(c)
    c.batch_size = 4096
    c.train.grad_cache_chunks = 16


def _probe_on_nih1000(c: ml_collections.ConfigDict) -> None:
    """Linear probes on ../shared/data/nih1000: train → valid."""
    common.shared(c.probe.train, "nih1000", "train")
    common.shared(c.probe.eval, "nih1000", "valid")


VARIANTS = {"smoke": _smoke, "demo": _demo, "covid": _covid, "paper": _paper, "large": _large}

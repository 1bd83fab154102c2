"""Weight import: random torch models in the torchvision / Hugging Face layouts give the same outputs here."""

import json

import jax
import numpy as np
import pytest

from cxr_jax import weights
from cxr_jax.data import sources

torch = pytest.importorskip("torch")
nn = torch.nn


class _Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5: stride on the 3×3 conv), same attribute names."""

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _ResNet50(nn.Module):
    """torchvision.models.resnet50's module tree (torchvision has no CPU build here)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            layers = []
            for j in range(blocks):
                layers.append(_Bottleneck(inplanes, planes, 2 if i > 0 and j == 0 else 1))
                inplanes = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.fc = nn.Linear(2048, 1000)

    def features(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean((2, 3))


def _randomised(model):
    """Random BatchNorm affine and running statistics, so the import of every tensor matters."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def torch_resnet():
    torch.manual_seed(0)
    return _randomised(_ResNet50())


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_resnet50_features_match_torch(tmp_path, torch_resnet, fmt):
    path = tmp_path / f"resnet50.{fmt}"
    if fmt == "pth":
        torch.save(torch_resnet.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in torch_resnet.state_dict().items()}, str(path))
    module, variables = weights.load_resnet50(path)
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        want = torch_resnet.features(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(module.apply(variables, images, train=False))
    assert got.shape == (2, 2048)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    gray_module, gray = weights.load_resnet50(path, in_channels=1)
    np.testing.assert_allclose(gray_module.apply(gray, images[..., :1]), module.apply(variables,
                               np.repeat(images[..., :1], 3, -1)), rtol=1e-4, atol=1e-5)


def test_resnet_import_errors_name_the_file(tmp_path, torch_resnet):
    state = torch_resnet.state_dict()
    del state["layer2.0.conv2.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(sources.DataError, match=r"partial.pth: weights do not fit the model; missing .*layer2_0"):
        weights.load_resnet50(path)
    (tmp_path / "junk.safetensors").write_bytes(b"\x05")
    with pytest.raises(sources.DataError, match="junk.safetensors: not a safetensors file"):
        weights.load_resnet50(tmp_path / "junk.safetensors")
    with pytest.raises(sources.DataError, match="no such weights file"):
        weights.load_resnet50(tmp_path / "absent.pth")


@pytest.mark.parametrize("safe", [True, False])
def test_bert_hidden_states_match_transformers(tmp_path, safe):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=40, type_vocab_size=2)
    torch.manual_seed(0)
    reference = transformers.BertModel(config).eval()
    if safe:
        reference.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").is_file()
    else:  # The older layout, with the "bert." prefix of BertForPreTraining checkpoints.
        reference.config.save_pretrained(tmp_path)
        torch.save({f"bert.{k}": v for k, v in reference.state_dict().items()}, tmp_path / "pytorch_model.bin")
    module, variables = weights.load_bert(tmp_path)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 60, size=(3, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, 7:] = 0
    mask[2, 2:] = 0
    with torch.no_grad():
        want = reference(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    got = np.asarray(module.apply(variables, ids, mask))
    keep = mask[..., None] > 0  # Padding positions are never used downstream (masked pooling).
    np.testing.assert_allclose(np.where(keep, got, 0), np.where(keep, want.last_hidden_state.numpy(), 0),
                               rtol=1e-4, atol=1e-5)
    frozen, _ = weights.load_bert(tmp_path, freeze_embeddings=True, frozen_layers=2)
    assert frozen.frozen_layers == 2 and frozen.num_layers == 3


def test_bert_directory_errors(tmp_path):
    with pytest.raises(sources.DataError, match="config.json: missing"):
        weights.load_bert(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_act": "relu"}))
    with pytest.raises(sources.DataError, match="only BERT with gelu"):
        weights.load_bert(tmp_path)


def test_safetensors_reader_matches_the_library(tmp_path):
    from safetensors.numpy import save_file

    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, -2], np.int64),
              "c": np.linspace(0, 1, 5).astype(np.float16)}
    save_file(arrays, str(tmp_path / "x.safetensors"))
    got = weights.read_state_dict(tmp_path / "x.safetensors")
    assert jax.tree.map(lambda x: (x.dtype, x.shape), got) == jax.tree.map(lambda x: (x.dtype, x.shape), arrays)
    for k in arrays:
        np.testing.assert_array_equal(got[k], arrays[k])

"""Tests of kd2m.models: shapes, the encoder/head split, projector, pretrained loading
(offline: from a file in an empty tmp TORCH_HOME, and the error when there is none)."""

from __future__ import annotations

import os
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from kd2m.models import KD2MNet, build_model, make_projector

torch.set_num_threads(1)


def _x(n=2, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


CASES = [
    ("resnet18", "imagenet", None, 512),
    ("resnet18", "cifar", None, 512),
    ("resnet34", "imagenet", None, 512),
    ("resnet34", "cifar", None, 512),
    ("resnet8", None, None, 64),
    ("resnet8", "cifar", 32, 128),
    ("resnet14", None, 8, 32),
    ("resnet20", None, None, 64),
]


@pytest.mark.parametrize(("arch", "stem", "width", "dim"), CASES)
def test_forward_shapes_and_composition(arch, stem, width, dim):
    torch.manual_seed(0)
    model = build_model(arch, 7, stem=stem, width=width)
    assert isinstance(model, KD2MNet) and model.arch == arch and model.feature_dim == dim
    assert isinstance(model.head, nn.Linear) and model.head.in_features == dim
    model.eval()
    x = _x()
    with torch.no_grad():
        logits, z = model(x)
        assert logits.shape == (2, 7) and z.shape == (2, dim)
        z2 = model.encoder(x)
        assert torch.equal(z, z2) and torch.equal(logits, model.head(z2))
    assert model.config["stem"] == (
        stem or ("imagenet" if arch in ("resnet18", "resnet34") else "cifar")
    )


def test_torchvision_stems():
    tv = build_model("resnet18", 10)
    assert tv.encoder.conv1.kernel_size == (7, 7) and isinstance(tv.encoder.maxpool, nn.MaxPool2d)
    assert isinstance(tv.encoder.fc, nn.Identity)
    cf = build_model("resnet18", 10, stem="cifar")
    assert cf.encoder.conv1.kernel_size == (3, 3) and cf.encoder.conv1.stride == (1, 1)
    assert isinstance(cf.encoder.maxpool, nn.Identity)


@pytest.mark.parametrize(("arch", "n"), [("resnet8", 1), ("resnet14", 2), ("resnet20", 3)])
def test_cifar_resnet_depth(arch, n):
    model = build_model(arch, 10)
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == 6 * n + 2  # conv layers + the linear head
    if arch == "resnet20":  # He et al. 2016, Table 6: 0.27M parameters
        assert abs(sum(p.numel() for p in model.parameters()) - 0.27e6) < 0.005e6


def test_training_step_updates_encoder_and_head():
    torch.manual_seed(0)
    model = build_model("resnet8", 3, width=4)
    before = [p.detach().clone() for p in model.parameters()]
    logits, z = model(_x(4))
    (nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])) + z.pow(2).mean()).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_errors():
    with pytest.raises(ValueError, match="unknown arch 'vgg11'.*resnet18"):
        build_model("vgg11", 10)
    with pytest.raises(ValueError, match="unknown stem 'tiny'.*cifar"):
        build_model("resnet18", 10, stem="tiny")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet8", 1)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet8", 10.0)
    with pytest.raises(ValueError, match="only has the 'cifar' stem"):
        build_model("resnet20", 10, stem="imagenet")
    with pytest.raises(ValueError, match="width"):
        build_model("resnet18", 10, width=32)
    with pytest.raises(ValueError, match="width"):
        build_model("resnet8", 10, width=0)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model("resnet8", 10, pretrained=True)


def test_projector():
    assert isinstance(make_projector(512, 512), nn.Identity)
    p = make_projector(64, 512)
    assert isinstance(p, nn.Linear) and p.bias is None
    assert p(torch.randn(5, 64)).shape == (5, 512)
    with pytest.raises(ValueError, match="student_dim"):
        make_projector(0, 512)


# --------------------------------------------------------------------------- pretrained


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """TORCH_HOME in an empty tmp dir, and any download attempt fails at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network unavailable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch"


def test_pretrained_unavailable_raises_with_where_and_how(empty_torch_home):
    with pytest.raises(RuntimeError) as err:
        build_model("resnet18", 10, pretrained=True)
    msg = str(err.value)
    expected = os.path.join(str(empty_torch_home), "hub", "checkpoints", "resnet18-f37072fd.pth")
    assert expected in msg and "TORCH_HOME" in msg and "URLError" in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg


def test_pretrained_loaded_from_hub_cache(empty_torch_home):
    """A file in the hub cache is used (no download): the encoder gets its weights."""
    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)
    ckpt = empty_torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(ref.state_dict(), ckpt / "resnet18-f37072fd.pth")
    model = build_model("resnet18", 10, pretrained=True)
    enc = model.encoder.state_dict()
    assert all(
        torch.equal(enc[k], v) for k, v in ref.state_dict().items() if not k.startswith("fc.")
    )
    assert model.head.out_features == 10
    assert model.config["pretrained"] == "ResNet18_Weights.IMAGENET1K_V1"
    with pytest.warns(UserWarning, match="conv1"):
        cifar = build_model("resnet18", 10, stem="cifar", pretrained=True)
    assert torch.equal(cifar.encoder.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert cifar.encoder.conv1.weight.shape == (64, 3, 3, 3)
    assert cifar.config["not_pretrained"] == ["conv1.weight"]

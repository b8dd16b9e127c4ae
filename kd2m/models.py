"""Networks as an encoder ``g`` (images -> penultimate features) and a linear head ``h``.

The paper distils the penultimate features ``z = g(x)`` of a student towards those of a
teacher (ResNet18 student, ResNet34 teacher; Section 5). Every model here is a
:class:`KD2MNet` whose ``forward`` returns ``(logits, features)`` with
``logits = head(features)``, so one training loop serves the teacher, the baseline
student and KD2M.

- ``"resnet18"``, ``"resnet34"``: torchvision's ResNets. ``stem="imagenet"`` keeps the
  7x7 stride-2 convolution and the max-pool on 32x32 inputs (as the author's code does:
  the last stage then sees 1x1 maps); ``stem="cifar"`` uses a 3x3 stride-1 convolution
  and no max-pool. ``fc`` is replaced by the head on the 512-d pooled features.
  ``pretrained=True`` loads torchvision's ImageNet weights into the encoder.
- ``"resnet8"``, ``"resnet14"``, ``"resnet20"``: the CIFAR ResNets of He et al. (2016,
  Sec. 4.2): 3x3 stem, three stages of ``n`` BasicBlocks with ``width``, ``2 width``,
  ``4 width`` channels at 32, 16, 8 pixels, global average pooling; depth ``6n + 2``;
  parameter-free (zero-padding, "option A") shortcuts when the shape changes. Feature
  dimension ``4 width``. For CPU-scale runs.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ARCHS", "STEMS", "KD2MNet", "build_model", "make_projector"]

ARCHS: dict[str, str] = {
    "resnet18": "torchvision ResNet18 (BasicBlock [2,2,2,2], 512-d features); the paper's student",
    "resnet34": "torchvision ResNet34 (BasicBlock [3,4,6,3], 512-d features); the paper's teacher",
    "resnet8": "CIFAR ResNet-8 of He et al. 2016 (3 stages x 1 BasicBlock), 4*width-d features",
    "resnet14": "CIFAR ResNet-14 of He et al. 2016 (3 stages x 2 BasicBlocks), 4*width-d features",
    "resnet20": "CIFAR ResNet-20 of He et al. 2016 (3 stages x 3 BasicBlocks), 4*width-d features",
}

STEMS: dict[str, str] = {
    "imagenet": "7x7 stride-2 conv + 3x3 stride-2 max-pool (torchvision ResNets only)",
    "cifar": "3x3 stride-1 conv, no max-pool",
}

_TORCHVISION = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights"}
_CIFAR_BLOCKS = {"resnet8": 1, "resnet14": 2, "resnet20": 3}


class KD2MNet(nn.Module):
    """``forward(x) -> (logits, features)`` with ``features = encoder(x)`` of shape
    ``(n, feature_dim)`` (the penultimate layer: globally average-pooled output of the
    last stage, flattened) and ``logits = head(features)`` of shape ``(n, num_classes)``.
    """

    def __init__(
        self, encoder: nn.Module, head: nn.Linear, feature_dim: int, arch: str, **config
    ) -> None:
        super().__init__()
        if head.in_features != feature_dim:
            raise ValueError(f"head takes {head.in_features} features, encoder gives {feature_dim}")
        self.encoder = encoder
        self.head = head
        self.feature_dim = int(feature_dim)
        self.arch = arch
        #: JSON-serialisable description (arch, num_classes, stem, width, pretrained, ...).
        self.config = {
            "arch": arch,
            "num_classes": head.out_features,
            "feature_dim": self.feature_dim,
            **config,
        }

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return self.head(z), z


# --------------------------------------------------------------------------- CIFAR ResNets


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut; when the shape changes the
    shortcut subsamples by ``stride`` and zero-pads the new channels (option A)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.extra = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.extra:
            short = F.pad(short, (0, 0, 0, 0, 0, self.extra))
        return F.relu(out + short)


def _cifar_resnet_encoder(blocks: int, width: int) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(3, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    ]
    c_in = width
    for stage, c_out in enumerate((width, 2 * width, 4 * width)):
        for b in range(blocks):
            layers.append(_BasicBlock(c_in, c_out, 2 if stage > 0 and b == 0 else 1))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    enc = nn.Sequential(*layers)
    for m in enc.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return enc


# --------------------------------------------------------------------------- torchvision


def _hub_checkpoint_path(url: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _load_imagenet_state_dict(arch: str) -> tuple[dict, str]:
    """torchvision's ImageNet weights for ``arch`` (from torch's hub cache, else the web)."""
    import torchvision.models as tvm

    weights = getattr(tvm, _TORCHVISION[arch]).IMAGENET1K_V1
    try:
        sd = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as e:  # URLError/HTTPError/OSError, hash mismatch, corrupt file
        path = _hub_checkpoint_path(weights.url)
        raise RuntimeError(
            f"pretrained=True: could not get torchvision's ImageNet weights {weights} for "
            f"{arch} ({type(e).__name__}: {e}). torch looked for the file {path} "
            f"(hub dir {torch.hub.get_dir()}; TORCH_HOME={os.environ.get('TORCH_HOME')!r}) "
            f"and then tried to download {weights.url}. To provide it offline, download "
            f"that URL on a machine with internet and copy it to {path} (or set TORCH_HOME "
            f"to a directory holding hub/checkpoints/{os.path.basename(weights.url)}); or "
            f"use pretrained=False."
        ) from e
    return sd, str(weights)


def _torchvision_encoder(arch: str, stem: str, pretrained: bool) -> tuple[nn.Module, dict]:
    import torchvision.models as tvm

    net = getattr(tvm, arch)(weights=None)
    net.fc = nn.Identity()
    info: dict = {"pretrained": None}
    if pretrained:
        sd, name = _load_imagenet_state_dict(arch)
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        net.load_state_dict(sd, strict=True)
        info["pretrained"] = name
    if stem == "cifar":
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
        if pretrained:
            warnings.warn(
                f"{arch} stem='cifar' with pretrained=True: ImageNet weights are loaded in "
                f"every layer but conv1 (3x3 here, 7x7 in ImageNet), which is re-initialised",
                stacklevel=3,
            )
            info["not_pretrained"] = ["conv1.weight"]
    return net, info


# --------------------------------------------------------------------------- public


def build_model(
    arch: str,
    num_classes: int,
    *,
    stem: str | None = None,
    pretrained: bool = False,
    width: int | None = None,
) -> KD2MNet:
    """A :class:`KD2MNet` of architecture ``arch`` (see :data:`ARCHS`) with a new
    ``nn.Linear(feature_dim, num_classes)`` head (PyTorch's default initialisation).

    ``stem``: None means ``"imagenet"`` for resnet18/34 (the author's choice) and
    ``"cifar"`` for the CIFAR ResNets, which have no other stem. ``pretrained``:
    torchvision's ImageNet weights in the encoder (resnet18/34 only); raises
    RuntimeError, saying where torch looked and how to provide the file, when they
    cannot be fetched. ``width``: base channels of the CIFAR ResNets (default 16,
    features ``4 * width``); resnet18/34 accept only None or 64.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known archs: {sorted(ARCHS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if stem is not None and stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; known stems: {sorted(STEMS)}")
    if arch in _TORCHVISION:
        stem = stem or "imagenet"
        if width not in (None, 64):
            raise ValueError(f"{arch} has a fixed width of 64; got width={width!r}")
        encoder, info = _torchvision_encoder(arch, stem, pretrained)
        dim, width = 512, 64
    else:
        stem = stem or "cifar"
        if stem != "cifar":
            raise ValueError(f"{arch} only has the 'cifar' stem (3x3 conv); got stem={stem!r}")
        if pretrained:
            raise ValueError(
                f"no pretrained weights for {arch}; pretrained=True is for {sorted(_TORCHVISION)}"
            )
        width = 16 if width is None else width
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        encoder, info = _cifar_resnet_encoder(_CIFAR_BLOCKS[arch], width), {"pretrained": None}
        dim = 4 * width
    head = nn.Linear(dim, num_classes)
    return KD2MNet(encoder, head, dim, arch, stem=stem, width=width, **info)


def make_projector(student_dim: int, teacher_dim: int) -> nn.Module:
    """Map student features into the teacher's feature space: ``nn.Identity()`` when
    ``student_dim == teacher_dim``, else ``nn.Linear(student_dim, teacher_dim,
    bias=False)``.

    The distillation distance is measured between the PROJECTED student features and
    the teacher features, D(P z_s, z_t); the projector's parameters are trained together
    with the student (add them to the student's optimiser). The paper's ResNet18/34 pair
    both have 512-d features, so there it is the identity.
    """
    for n, v in (("student_dim", student_dim), ("teacher_dim", teacher_dim)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{n} must be a positive int, got {v!r}")
    if student_dim == teacher_dim:
        return nn.Identity()
    return nn.Linear(student_dim, teacher_dim, bias=False)

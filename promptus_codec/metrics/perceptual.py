"""LPIPS (the ``lpips`` package) with an honest answer about its backbone weights.

LPIPS ships its small linear heads inside the package, but its AlexNet / VGG backbone comes
from torchvision, which downloads it into the torch hub cache on first use. This machine
cannot download, so :func:`load_lpips` looks in the cache first and, when the file is
missing, says which file to put where instead of hanging on the network.
"""

from __future__ import annotations

from pathlib import Path

from promptus_codec.errors import WeightsNotFoundError, require

# torchvision's file names for the ImageNet backbones: LPIPS's two, and the reference fitting loss's VGG19.
BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth", "vgg19": "vgg19-dcbb9e9d.pth"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOWNLOAD_ROOT = "https://download.pytorch.org/models/"


def backbone_path(net: str) -> Path:
    """Where torchvision keeps (and looks for) the backbone weights: $TORCH_HOME/hub/checkpoints."""
    torch = require("torch", "torch")
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


def lpips_available(net: str = "alex") -> bool:
    return backbone_path(net).is_file()


AUTO_NONE_WARNING = (
    "LPIPS backbone weights are not in the torch hub cache; fitting with MSE only "
    "(--perceptual lpips makes this an error and says which file is missing)"
)


def resolve_perceptual(kind: str, preset: str | None = None, warn=None) -> str:
    """--perceptual as the encoder takes it. "auto": the reference preset's own VGG19 term (refused
    later, with the file to fetch, when its weights are missing); otherwise lpips when AlexNet's
    weights are here, else none, and ``warn`` hears AUTO_NONE_WARNING.
    """
    if kind != "auto":
        return kind
    if preset == "reference":
        return "vgg19"
    if lpips_available("alex"):
        return "lpips"
    if warn is not None:
        warn(AUTO_NONE_WARNING)
    return "none"


def _missing_backbone(what: str, net: str) -> WeightsNotFoundError:
    path = backbone_path(net)
    return WeightsNotFoundError(
        f"{what} needs its backbone weights at {path} (download {DOWNLOAD_ROOT}{path.name} "
        f"on a machine with internet and copy it there); or choose --perceptual none"
    )


def load_lpips(net: str = "alex", random_backbone: bool = False):
    """An eval-mode ``lpips.LPIPS`` on images in [-1, 1], frozen.

    ``random_backbone=True`` builds the network with an untrained backbone: only for tests
    of the plumbing, never for reported numbers.
    """
    if net not in ("alex", "vgg"):
        raise ValueError(f"net={net!r}: expected alex or vgg")
    lpips = require("lpips", "metrics")
    if not random_backbone and not lpips_available(net):
        raise _missing_backbone(f"LPIPS-{net}", net)
    model = lpips.LPIPS(net=net, pnet_rand=random_backbone, verbose=False)
    model.eval().requires_grad_(False)
    return model


def lpips_distance(random_backbone: bool = False):
    """LPIPS-AlexNet as a fitting loss: (B, 3, H, W) images and targets in [0, 1] -> (B,)."""
    import torch

    class LpipsDistance(torch.nn.Module):
        def __init__(self, lpips_module):
            super().__init__()
            self.lpips = lpips_module

        def forward(self, images, targets):
            return self.lpips(images * 2 - 1, targets * 2 - 1, normalize=False).flatten()

    return LpipsDistance(load_lpips("alex", random_backbone=random_backbone))


def vgg19_distance(random_backbone: bool = False):
    """The reference's perceptual fitting term: (B, 3, H, W) images and targets in [0, 1] -> (B,).

    As the reference's lossbuilder.py computes it: the images go in at [-1, 1] (not [0, 1]),
    normalised with ImageNet's mean and std anyway; the term is the mean, over VGG19's 16
    convolutions, of the MSE between the two images' pre-ReLU outputs of that convolution.
    Needs torchvision's vgg19-dcbb9e9d.pth in the torch hub cache (``random_backbone`` for tests).
    """
    torch = require("torch", "torch")
    torchvision = require("torchvision", "metrics")
    if not random_backbone and not lpips_available("vgg19"):
        raise _missing_backbone("the reference preset's VGG19 perceptual loss", "vgg19")
    network = torchvision.models.vgg19(weights=None)
    if not random_backbone:
        network.load_state_dict(torch.load(backbone_path("vgg19"), map_location="cpu", weights_only=True))

    class VGGContentDistance(torch.nn.Module):
        def __init__(self, features):
            super().__init__()
            convs = [i for i, layer in enumerate(features) if isinstance(layer, torch.nn.Conv2d)]
            self.features = features[: convs[-1] + 1]  # nothing after the 16th convolution counts
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

        def forward(self, images, targets):
            x = (torch.cat([images, targets]) * 2 - 1 - self.mean) / self.std  # (2B, 3, H, W)
            total, convs = 0, 0
            for layer in self.features:
                x = layer(x)
                if isinstance(layer, torch.nn.Conv2d):
                    ours, theirs = x.chunk(2)
                    total = total + ((ours - theirs) ** 2).flatten(1).mean(1)
                    convs += 1
            return total / (convs + 1e-9)

    return VGGContentDistance(network.features).eval().requires_grad_(False)

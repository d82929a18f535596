"""LPIPS (the ``lpips`` package) with an honest answer about its backbone weights.

LPIPS ships its small linear heads inside the package, but its AlexNet / VGG backbone comes
from torchvision, which downloads it into the torch hub cache on first use. This machine
cannot download, so :func:`load_lpips` looks in the cache first and, when the file is
missing, says which file to put where instead of hanging on the network.
"""

from __future__ import annotations

from pathlib import Path

from promptus_codec.errors import WeightsNotFoundError, require

# torchvision's file names for the ImageNet backbones LPIPS uses.
BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
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


def resolve_perceptual(kind: str, warn=None) -> str:
    """--perceptual as the encoder takes it: "auto" is lpips when AlexNet's weights are here, else none.

    ``warn`` hears AUTO_NONE_WARNING when auto falls back to none.
    """
    if kind != "auto":
        return kind
    if lpips_available("alex"):
        return "lpips"
    if warn is not None:
        warn(AUTO_NONE_WARNING)
    return "none"


def load_lpips(net: str = "alex", random_backbone: bool = False):
    """An eval-mode ``lpips.LPIPS`` on images in [-1, 1], frozen.

    ``random_backbone=True`` builds the network with an untrained backbone: only for tests
    of the plumbing, never for reported numbers.
    """
    if net not in BACKBONE_FILES:
        raise ValueError(f"net={net!r}: expected one of {sorted(BACKBONE_FILES)}")
    lpips = require("lpips", "metrics")
    if not random_backbone and not lpips_available(net):
        path = backbone_path(net)
        raise WeightsNotFoundError(
            f"LPIPS-{net} needs its backbone weights at {path} (download {DOWNLOAD_ROOT}{path.name} "
            f"on a machine with internet and copy it there); or choose --perceptual none"
        )
    model = lpips.LPIPS(net=net, pnet_rand=random_backbone, verbose=False)
    model.eval().requires_grad_(False)
    return model

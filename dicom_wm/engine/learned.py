"""The learned predictor: an exact integer CNN behind the Predictor contract.

``load_learned_predictor(name=None, device=None)`` resolves a model card
(``dicom_wm.models.cards``), checks the checkpoint's pinned SHA-256, loads it
with ``weights_only=True`` and returns a :class:`LearnedPredictor` on CUDA
when available, else on the CPU. Predictions and complexities are
bit-identical on every device (see ``dicom_wm.models.lattice_net``), so an
instance embedded on a GPU worker restores on a CPU one.
"""

from __future__ import annotations


import numpy as np
import torch

from dicom_wm.models.cards import ModelCard
from dicom_wm.models.checkpoint import load_model
from dicom_wm.models.geometry import check_planes
from dicom_wm.models.lattice_net import LatticeNet, exact_mode

__all__ = ["LearnedPredictor", "load_learned_predictor", "select_device"]

# Samples per forward pass: bounds activation memory (about 100 bytes per
# sample with 16 channels).
_BATCH_SAMPLES = {"cpu": 1 << 21, "cuda": 1 << 26}


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else (``None`` or ``"auto"``) ``cuda`` when
    available, else ``cpu``. Raises ``ValueError`` for a CUDA device that
    torch cannot see."""
    if device is not None and str(device) != "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class LearnedPredictor:
    """Predictor backed by a :class:`~dicom_wm.models.LatticeNet`.

    Parameters
    ----------
    net : LatticeNet
        The network, already on ``device`` with its weights loaded.
    card : ModelCard
        The card it was loaded from (name, version, pinned SHA-256).
    device : torch.device
        Where the forward passes run. Planes are batched over their first
        axis, in chunks of at most ``_BATCH_SAMPLES`` samples.
    """

    def __init__(self, net: LatticeNet, card: ModelCard, device: torch.device) -> None:
        self.net = net
        self.card = card
        self.device = device
        self.name = f"learned-{card.name}"
        self.version = card.version
        self.model_sha256: str | None = card.sha256

    def __repr__(self) -> str:
        return f"LearnedPredictor({self.card.name!r}, sha256={self.card.sha256[:12]}..., device={self.device})"

    def predict_and_complexity(self, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both maps in one forward pass (int64, same shape as ``planes``)."""
        check_planes(planes)
        n, rows, cols = planes.shape
        step = max(1, _BATCH_SAMPLES.get(self.device.type, 1 << 21) // (rows * cols))
        preds, costs = [], []
        with torch.no_grad(), exact_mode():
            for start in range(0, n, step):
                x = torch.from_numpy(np.ascontiguousarray(planes[start : start + step], dtype=np.int64)).to(self.device)
                p, c = self.net(x)
                preds.append(p.cpu().numpy())
                costs.append(c.cpu().numpy())
        pred = np.concatenate(preds) if preds else np.zeros(planes.shape, np.int64)
        cost = np.concatenate(costs) if costs else np.zeros(planes.shape, np.int64)
        return pred, cost

    def predict(self, planes: np.ndarray) -> np.ndarray:
        """A-lattice predictions from B-lattice samples only (B entries hold
        the classic prediction)."""
        return self.predict_and_complexity(planes)[0]

    def complexity(self, planes: np.ndarray) -> np.ndarray:
        """Predicted |error| in 1/16 grey levels at A positions (0 on B);
        the engine walks low values first."""
        return self.predict_and_complexity(planes)[1]


def load_learned_predictor(
    name: str | None = None, device: str | torch.device | None = None
) -> LearnedPredictor:
    """Load a learned predictor by card name (``None`` or ``"learned"`` ->
    the default card; ``"learned-<card>"`` as recorded in provenance works
    too). Raises ``ModelIntegrityError`` when the checkpoint's SHA-256 does
    not match the card."""
    dev = select_device(device)
    net, card, _weights = load_model(name, dev)
    return LearnedPredictor(net, card, dev)

"""Load a model card's checkpoint: pinned SHA-256, ``weights_only=True``."""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from dicom_wm.models.cards import ModelCard, get_card
from dicom_wm.models.lattice_net import LatticeNet, build_lattice_net, validate_weights

__all__ = ["CHECKPOINT_FORMAT", "WEIGHTS_DIR", "ModelIntegrityError", "load_weights", "load_model"]

CHECKPOINT_FORMAT = "dicom-wm-lattice-net/1"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class ModelIntegrityError(ValueError):
    """The checkpoint file is missing, does not match its pinned SHA-256,
    or does not fit its card."""


def load_weights(card: ModelCard, weights_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Read, hash-check and validate the integer weights of ``card``."""
    path = (weights_dir or WEIGHTS_DIR) / card.checkpoint
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelIntegrityError(f"model {card.name!r}: checkpoint {path} is missing") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.sha256:
        raise ModelIntegrityError(
            f"model {card.name!r}: {path.name} has SHA-256 {digest}, the card pins {card.sha256}; refusing to load"
        )
    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ModelIntegrityError(f"model {card.name!r}: {path.name} is not a {CHECKPOINT_FORMAT} checkpoint")
    if obj.get("config") != asdict(card.config):
        raise ModelIntegrityError(f"model {card.name!r}: checkpoint config {obj.get('config')} differs from the card's")
    weights = {k: v.numpy().astype(np.int64) for k, v in obj["weights"].items()}
    try:
        validate_weights(card.config, weights)
    except ValueError as exc:
        raise ModelIntegrityError(f"model {card.name!r}: {exc}") from None
    return weights


def load_model(
    name: str | None = None, device: str | torch.device = "cpu", weights_dir: Path | None = None
) -> tuple[LatticeNet, ModelCard, dict[str, np.ndarray]]:
    """Card ``name`` -> (network on ``device``, card, integer weights)."""
    card = get_card(name)
    weights = load_weights(card, weights_dir)
    net = build_lattice_net(card.config)
    net.load_integer_weights(weights)
    return net.to(device).eval(), card, weights

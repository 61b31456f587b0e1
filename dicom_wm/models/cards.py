"""Model cards: named, pinned checkpoints of the learned predictor."""

from __future__ import annotations

from dataclasses import dataclass, field

from dicom_wm.models.config import LatticeNetConfig

__all__ = ["ModelCard", "MODEL_CARDS", "DEFAULT_MODEL", "get_card"]


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint is and how to check it.

    Attributes
    ----------
    name : str
        Card name; the predictor records ``"learned-" + name``.
    version : str
        Bumped whenever the weights or the arithmetic change.
    checkpoint : str
        File name under ``dicom_wm/models/weights/``.
    sha256 : str
        Pinned SHA-256 of the checkpoint file; loading refuses any other.
    config : LatticeNetConfig
        Network shape and fixed-point format the weights were made for.
    notes : str
        Training data and split, in one line.
    """

    name: str
    version: str
    checkpoint: str
    sha256: str
    config: LatticeNetConfig
    notes: str = field(default="")


MODEL_CARDS: dict[str, ModelCard] = {
    card.name: card
    for card in (
        ModelCard(
            name="lattice-cnn-v1",
            version="1",
            checkpoint="lattice-cnn-v1.pt",
            sha256="39db590c3699c3e96dba7d2a63399d8e18f363ff25abfdf52d48e669711cad6c",
            config=LatticeNetConfig(channels=16, conv_layers=3, weight_bits=12),
            notes=(
                "tools/train_predictor.py --steps 2500 --seed 0 on the TRAIN_FILES of dicom_wm.models.corpus "
                "(CT, MR, CR, US of pydicom + pydicom-data, plus lossy JPEG 2000 and 2x zero-fill copies); "
                "held out: 693_*, MR2_*, RG1_*, US1_*"
            ),
        ),
    )
}

DEFAULT_MODEL = "lattice-cnn-v1"


def get_card(name: str | None = None) -> ModelCard:
    """Resolve a card by name (``None`` -> the default). Accepts the bare
    name, or the predictor name ``"learned-<name>"``; ``"learned"`` means
    the default."""
    if name is None or name == "learned":
        name = DEFAULT_MODEL
    elif name.startswith("learned-"):
        name = name[len("learned-") :]
    try:
        return MODEL_CARDS[name]
    except KeyError:
        raise ValueError(f"unknown model card {name!r}; known: {', '.join(sorted(MODEL_CARDS))}") from None

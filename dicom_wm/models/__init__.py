"""Models of the prediction path: the exact lattice CNN, its numpy
reference, model cards and the pinned-checkpoint loader.

Pure modules; the engine adapter is :mod:`dicom_wm.engine.learned`.
"""

from dicom_wm.models.cards import DEFAULT_MODEL, MODEL_CARDS, ModelCard, get_card
from dicom_wm.models.checkpoint import ModelIntegrityError, load_model, load_weights
from dicom_wm.models.config import LatticeNetConfig
from dicom_wm.models.lattice_net import LatticeNet, build_lattice_net
from dicom_wm.models.reference import reference_forward

__all__ = [
    "LatticeNetConfig",
    "LatticeNet",
    "build_lattice_net",
    "reference_forward",
    "ModelCard",
    "MODEL_CARDS",
    "DEFAULT_MODEL",
    "get_card",
    "ModelIntegrityError",
    "load_model",
    "load_weights",
]

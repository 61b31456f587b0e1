"""The reversible engine: predictors, ±1 histogram shifting, plane codec."""

from dicom_wm.engine.predictors import ClassicRhombus, Predictor

__all__ = ["Predictor", "ClassicRhombus", "get_predictor", "PREDICTOR_NAMES"]

PREDICTOR_NAMES = ("classic", "learned", "classic-adaptive", "learned-adaptive")


def get_predictor(name: str) -> Predictor:
    """Resolve a predictor by option name ("classic" | "learned" |
    "classic-adaptive" | "learned-adaptive") or by the name it records in
    provenance ("classic-rhombus", "learned-...", "adaptive-<base name>").
    The adaptive ones come back as an ``AdaptiveFitter`` (fit it to the
    planes before predicting; readers use the weights carried in the header)."""
    if name in ("classic-adaptive", "learned-adaptive") or name.startswith("adaptive-"):
        from dicom_wm.engine.adaptive import ADAPTIVE_PREFIX, AdaptiveFitter

        if name == "classic-adaptive":
            base_name = "classic"
        elif name == "learned-adaptive":
            base_name = "learned"
        else:
            base_name = name[len(ADAPTIVE_PREFIX):]
        if base_name.startswith("adaptive"):
            raise ValueError(f"unknown predictor {name!r}")
        return AdaptiveFitter(get_predictor(base_name))
    if name in ("classic", ClassicRhombus.name):
        return ClassicRhombus()
    if name == "learned" or name.startswith("learned"):
        from dicom_wm.engine.learned import load_learned_predictor

        return load_learned_predictor(None if name == "learned" else name)
    raise ValueError(f"unknown predictor {name!r}; choose one of {', '.join(PREDICTOR_NAMES)}")

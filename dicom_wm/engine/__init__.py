"""The reversible engine: predictors, ±1 histogram shifting, plane codec."""

from dicom_wm.engine.predictors import ClassicRhombus, Predictor

__all__ = ["Predictor", "ClassicRhombus", "get_predictor", "PREDICTOR_NAMES"]

PREDICTOR_NAMES = ("classic", "learned")


def get_predictor(name: str) -> Predictor:
    """Resolve a predictor by option name ("classic" | "learned") or by the
    name it records in provenance ("classic-rhombus", "learned-...")."""
    if name in ("classic", ClassicRhombus.name):
        return ClassicRhombus()
    if name == "learned" or name.startswith("learned"):
        from dicom_wm.engine.learned import load_learned_predictor

        return load_learned_predictor(None if name == "learned" else name)
    raise ValueError(f"unknown predictor {name!r}; choose one of {', '.join(PREDICTOR_NAMES)}")

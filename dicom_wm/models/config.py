"""Configuration of the exact lattice CNN (the learned predictor's network).

Every number that fixes the integer arithmetic lives here, so a checkpoint
plus its config is the whole definition of the predictor.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LatticeNetConfig", "FLOAT64_EXACT_LIMIT"]

#: Every partial sum of every convolution must stay below this magnitude.
#: float64 represents all integers up to 2**53 exactly; the margin of 2**3
#: keeps any summation order (and any convolution algorithm whose rounding
#: error is far below 0.5, see docs/learned-predictor.md) exact after the
#: round-to-integer guard.
FLOAT64_EXACT_LIMIT = 1 << 50


@dataclass(frozen=True)
class LatticeNetConfig:
    """Shape and fixed-point format of :class:`~dicom_wm.models.LatticeNet`.

    Parameters
    ----------
    channels : int
        Feature channels of the hidden layers.
    conv_layers : int
        3x3 convolutions with ReLU on the half-resolution B-lattice grid
        (the first one reads the 4 difference channels).
    skip_kernel : int
        Odd size of the linear skip convolution from the differences to the
        correction outputs.
    frac_bits : int
        Fractional bits of every activation: activations are integers in
        units of ``2**-frac_bits`` grey levels.
    diff_clip_bits : int
        B-lattice differences are clipped to ``±2**diff_clip_bits`` grey
        levels before the network, whatever the bit depth of the image.
    act_clip_bits : int
        Hidden activations are clipped to ``[0, 2**act_clip_bits]``.
    weight_bits : int
        Integer weights and biases satisfy ``|w| < 2**weight_bits``.
    cost_frac_bits : int
        Fractional bits of the complexity output (``<= frac_bits``).
    cost_offset_bits : int
        The ranking head's output plus ``2**cost_offset_bits`` (then clipped
        at 0) is the complexity, so it is non-negative without tying all
        negative outputs at 0.
    """

    channels: int = 16
    conv_layers: int = 3
    skip_kernel: int = 5
    frac_bits: int = 6
    diff_clip_bits: int = 12
    act_clip_bits: int = 22
    weight_bits: int = 10
    cost_frac_bits: int = 4
    cost_offset_bits: int = 14

    def __post_init__(self) -> None:
        if self.channels < 1 or self.channels > 64:
            raise ValueError(f"channels={self.channels} is outside 1..64")
        if self.conv_layers < 1 or self.conv_layers > 8:
            raise ValueError(f"conv_layers={self.conv_layers} is outside 1..8")
        if self.skip_kernel < 1 or self.skip_kernel % 2 == 0 or self.skip_kernel > 9:
            raise ValueError(f"skip_kernel={self.skip_kernel} must be odd and at most 9")
        if not 2 <= self.frac_bits <= 12:
            raise ValueError(f"frac_bits={self.frac_bits} is outside 2..12")
        if not 0 <= self.cost_frac_bits <= self.frac_bits:
            raise ValueError(f"cost_frac_bits={self.cost_frac_bits} is outside 0..frac_bits")
        if not 0 <= self.cost_offset_bits <= 30:
            raise ValueError(f"cost_offset_bits={self.cost_offset_bits} is outside 0..30")
        if not 1 <= self.diff_clip_bits <= 16:
            raise ValueError(f"diff_clip_bits={self.diff_clip_bits} is outside 1..16")
        if not self.diff_clip_bits + self.frac_bits <= self.act_clip_bits <= 30:
            raise ValueError(f"act_clip_bits={self.act_clip_bits} is outside diff_clip_bits+frac_bits..30")
        if not 2 <= self.weight_bits <= 16:
            raise ValueError(f"weight_bits={self.weight_bits} is outside 2..16")

    @property
    def radius(self) -> int:
        """Receptive-field radius in half-resolution blocks (differences
        included), which fixes the mirror padding."""
        return 1 + max(self.conv_layers, self.skip_kernel // 2)

    @property
    def pad(self) -> int:
        """Full-resolution mirror padding on each side (even, so the padded
        image keeps the lattice parity)."""
        return 2 * (self.radius + 1)

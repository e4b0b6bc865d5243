"""Dense CRF parameters (DeepLab v2's by default) and their C form."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BadInputError
from ._binding import NORMALIZATIONS, SdCrfParams


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF parameters; the defaults are DeepLab v2's (spatial 3/3, bilateral 4/67/3).

    DeepLab's other published bilateral setting is weight 5, θα 50, θβ 10.
    """

    spatial_weight: float = 3.0
    spatial_theta: float = 3.0
    bilateral_weight: float = 4.0
    bilateral_theta_xy: float = 67.0
    bilateral_theta_rgb: float = 3.0
    iterations: int = 10
    normalization: str = "symmetric"  # pydensecrf NORMALIZE_SYMMETRIC; or "after" (NORMALIZE_AFTER)

    def to_c(self) -> SdCrfParams:
        """The ``sd_crf_params`` struct; raises BadInputError for what the struct cannot hold."""
        if self.normalization not in NORMALIZATIONS:
            raise BadInputError(
                f"normalization must be one of {sorted(NORMALIZATIONS)}, got {self.normalization!r}"
            )
        if isinstance(self.iterations, bool) or int(self.iterations) != self.iterations:
            raise BadInputError(f"iterations must be an integer, got {self.iterations!r}")
        if not -(2**31) <= int(self.iterations) < 2**31:
            raise BadInputError(f"iterations is out of range: {self.iterations}")
        return SdCrfParams(
            float(self.spatial_weight),
            float(self.spatial_theta),
            float(self.bilateral_weight),
            float(self.bilateral_theta_xy),
            float(self.bilateral_theta_rgb),
            int(self.iterations),
            NORMALIZATIONS[self.normalization],
        )

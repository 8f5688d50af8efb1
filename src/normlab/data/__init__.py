"""Data sources, independent of training: mixtures, bundled and user image data."""

from normlab.data.mixtures import GRID25, MIXTURES, RING8, MixtureSpec, get_mixture
from normlab.data.source import BatchStream, Data, load_data
from normlab.data.stacked import digit_split, stacked_digits

__all__ = [
    "GRID25",
    "MIXTURES",
    "RING8",
    "BatchStream",
    "Data",
    "MixtureSpec",
    "digit_split",
    "get_mixture",
    "load_data",
    "stacked_digits",
]

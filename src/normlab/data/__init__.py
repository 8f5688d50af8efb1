"""Data sources, independent of training: mixtures, bundled and user image data."""

from normlab.data.mixtures import GRID25, MIXTURES, RING8, MixtureSpec, get_mixture
from normlab.data.source import BatchStream, Data, load_data

__all__ = [
    "GRID25",
    "MIXTURES",
    "RING8",
    "BatchStream",
    "Data",
    "MixtureSpec",
    "get_mixture",
    "load_data",
]

"""Data sources, independent of training: mixtures, bundled and user image data."""

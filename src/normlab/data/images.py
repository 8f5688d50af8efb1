"""User image data: a folder of image files, an ``.npz`` array, or the CIFAR-10 python batches.

Every loader returns ``(images, labels)``: ``images`` a float32 ``(N, C, H, W)`` array in
``[-1, 1]``, ``labels`` an int64 ``(N,)`` array or None. Bad or missing data raises
``ValueError`` / ``FileNotFoundError`` with a message saying what was expected.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

#: File name suffixes ``folder:`` reads (anything PIL opens; these are the ones looked for).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

#: The files of the CIFAR-10 "python version" (cifar-10-python.tar.gz, folder cifar-10-batches-py).
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

#: npz keys tried, in order, for the images and the labels.
NPZ_IMAGE_KEYS = ("images", "x", "X", "data", "arr_0")
NPZ_LABEL_KEYS = ("labels", "y", "Y", "targets")


def _resize_square(img, resolution: int):
    """Centre-crop ``img`` to a square, then resize it to ``resolution`` x ``resolution``."""
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img.resize((resolution, resolution), Image.Resampling.BICUBIC)


def load_folder(path: str | Path, resolution: int | None = None) -> tuple[np.ndarray, None]:
    """Every image file under ``path`` (recursively), as RGB, or greyscale if all are.

    Images must all have the same size unless ``resolution`` is given, in which case each
    is centre-cropped to a square and resized to ``resolution``.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise ValueError(f"folder:{root} is not a folder; for one array of images use npz:PATH")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"image folder {str(root)!r} holds no image files (looked for "
            f"{', '.join(IMAGE_SUFFIXES)} in it and its sub-folders)"
        )
    pics = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                pics.append(im.copy())
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ValueError(f"cannot read image file {str(f)!r}: {err}") from None
    grey = all(p.mode in ("1", "L", "I;16", "I", "F") for p in pics)
    mode = "L" if grey else "RGB"
    pics = [p.convert(mode) for p in pics]
    if resolution is not None:
        pics = [_resize_square(p, resolution) for p in pics]
    sizes: dict[tuple[int, int], Path] = {}
    for p, f in zip(pics, files):
        sizes.setdefault(p.size, f)
    if len(sizes) > 1:
        examples = "; ".join(f"{w}x{h} (e.g. {f.name})" for (w, h), f in list(sizes.items())[:4])
        raise ValueError(
            f"images in {str(root)!r} have {len(sizes)} different sizes: {examples}. Resize them "
            f"to one size, or set 'resolution' (e.g. --set resolution=32) to centre-crop and resize"
        )
    arr = np.stack([np.asarray(p, dtype=np.uint8) for p in pics])
    arr = arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2)
    return _to_unit_range(arr, f"folder:{root}"), None


def _to_unit_range(arr: np.ndarray, where: str) -> np.ndarray:
    """uint8 ``[0, 255]`` or float ``[0, 1]`` / ``[-1, 1]`` -> float32 ``[-1, 1]``."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 127.5 - 1.0
    if not np.issubdtype(arr.dtype, np.floating):
        if (
            np.issubdtype(arr.dtype, np.integer)
            and arr.size
            and arr.min() >= 0
            and arr.max() <= 255
        ):
            return arr.astype(np.float32) / 127.5 - 1.0
        raise ValueError(f"{where}: images must be uint8 or float, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: the images hold NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return arr * 2.0 - 1.0
    if lo >= -1.0 and hi <= 1.0:
        return arr
    if lo >= 0.0 and hi <= 255.0:
        return arr / 127.5 - 1.0
    raise ValueError(
        f"{where}: float images must lie in [0, 1], [-1, 1] or [0, 255]; found [{lo:g}, {hi:g}]"
    )


def _to_nchw(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim == 3:  # (N, H, W) greyscale
        return arr[:, None]
    if arr.ndim != 4:
        raise ValueError(
            f"{where}: expected images shaped (N, H, W), (N, H, W, C) or (N, C, H, W), "
            f"got shape {arr.shape}"
        )
    if arr.shape[1] in (1, 3, 4) and arr.shape[3] not in (1, 3, 4):
        nchw = arr
    elif arr.shape[3] in (1, 3, 4):
        nchw = arr.transpose(0, 3, 1, 2)
    else:
        raise ValueError(
            f"{where}: cannot tell the channel axis of shape {arr.shape}: expected 1, 3 or 4 "
            f"channels on axis 1 (NCHW) or axis 3 (NHWC)"
        )
    return nchw[:, :3] if nchw.shape[1] == 4 else nchw  # drop alpha


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The image array of an ``.npz`` (or ``.npy``) file, NHWC or NCHW, uint8 or float."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"npz file {str(p)!r} does not exist")
    where = f"npz:{p}"
    try:
        loaded = np.load(p, allow_pickle=False)
    except ValueError as err:
        raise ValueError(
            f"{where}: not a readable .npz/.npy file of plain arrays ({err})"
        ) from None
    except (OSError, EOFError) as err:
        raise ValueError(f"{where}: not a readable .npz/.npy file ({err})") from None
    labels = None
    if isinstance(loaded, np.ndarray):
        arr = loaded
    else:
        with loaded:
            keys = list(loaded.keys())
            if not keys:
                raise ValueError(f"{where}: the file holds no arrays")
            key = next(
                (k for k in NPZ_IMAGE_KEYS if k in keys), keys[0] if len(keys) == 1 else None
            )
            if key is None:
                raise ValueError(
                    f"{where}: which array holds the images? Name it one of "
                    f"{', '.join(NPZ_IMAGE_KEYS)} (found: {', '.join(keys)})"
                )
            try:
                arr = loaded[key]
            except ValueError as err:
                raise ValueError(
                    f"{where}: cannot read array {key!r} without pickles ({err}); store plain "
                    f"numeric arrays"
                ) from None
            lkey = next((k for k in NPZ_LABEL_KEYS if k in keys), None)
            if lkey is not None:
                labels = np.asarray(loaded[lkey]).astype(np.int64).reshape(-1)
    if arr.shape[0] == 0:
        raise ValueError(f"{where}: the image array is empty")
    arr = _to_nchw(np.asarray(arr), where)
    if labels is not None and labels.shape[0] != arr.shape[0]:
        raise ValueError(f"{where}: {labels.shape[0]} labels for {arr.shape[0]} images")
    return _to_unit_range(arr, where), labels


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batches only: dicts, lists and numpy arrays, nothing executable."""

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch file")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            batch = _CifarUnpickler(fh, encoding="bytes").load()
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        data = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(labels, dtype=np.int64)
    except Exception as err:
        raise ValueError(
            f"{str(path)!r} is not a CIFAR-10 python batch file ({type(err).__name__}: {err})"
        ) from None
    if labels.shape[0] != data.shape[0]:
        raise ValueError(f"{str(path)!r}: {labels.shape[0]} labels for {data.shape[0]} images")
    return data, labels


def load_cifar10(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The 50,000 CIFAR-10 training images from the python-pickle batches folder."""
    root = Path(path)
    missing = [f for f in CIFAR10_TRAIN_FILES if not (root / f).is_file()]
    if missing:
        what = "does not exist" if not root.is_dir() else f"lacks {', '.join(missing)}"
        raise FileNotFoundError(
            f"CIFAR-10 folder {str(root)!r} {what}. Expected the python version: download "
            f"cifar-10-python.tar.gz from {CIFAR10_URL}, extract it, and pass the folder it "
            f"creates, cifar10:/path/to/cifar-10-batches-py, which must hold "
            f"{', '.join(CIFAR10_TRAIN_FILES)}"
        )
    parts = [_read_cifar_batch(root / f) for f in CIFAR10_TRAIN_FILES]
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    return data.astype(np.float32) / 127.5 - 1.0, labels

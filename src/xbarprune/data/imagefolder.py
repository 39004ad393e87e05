"""Reader for image-folder data sets (one subfolder per class of PNG / JPEG / BMP images).

Accepted layouts under ``root``::

    root/train/<class>/*.png  and  root/test/<class>/*.png   (optionally root/val/<class>/...)
    root/train/<class>/...    and  root/val/<class>/...      (val is used as the test split,
                                                              the ImageNet convention)
    root/<class>/*.png                                        (one pool; the caller splits it)

Classes are the sorted subfolder names of the training folder. Images are decoded with Pillow
(a dependency of matplotlib, so normally present); without it a
:class:`~xbarprune.errors.DataError` says how to install it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xbarprune.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "find_layout", "read_image_folder", "list_classes"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow ships with matplotlib
        raise DataError(
            "reading an image folder needs Pillow, which is not installed: pip install pillow"
        ) from exc
    return Image


def list_classes(folder: Path) -> list[str]:
    """Sorted names of the subfolders of ``folder`` that hold at least one image."""
    classes = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.rglob("*") if f.is_file()):
            classes.append(d.name)
    return classes


def find_layout(root: Path) -> dict[str, Path]:
    """Map split names (``train``, optionally ``val`` and ``test``, or ``all``) to folders."""
    if not root.is_dir():
        raise DataError(f"image folder root {root} does not exist or is not a folder")
    sub = {n: root / n for n in ("train", "val", "test") if (root / n).is_dir()}
    if "train" in sub and ("test" in sub or "val" in sub):
        if "test" not in sub:
            return {"train": sub["train"], "test": sub["val"]}
        return sub
    if not list_classes(root):
        raise DataError(
            f"no images found under {root}: expected {root}/<class>/*.png (or .jpg, .jpeg, "
            f".bmp), or {root}/train/<class>/... with {root}/test/<class>/..."
        )
    return {"all": root}


def read_image_folder(
    folder: Path,
    classes: list[str],
    *,
    image_size: int | None = None,
    channels: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``folder/<class>/**/*`` images -> (uint8 (N, C, H, W), int64 labels).

    ``image_size`` resizes every image to a square of that size (bilinear); otherwise all
    images must already have one size. ``channels`` 1 converts to greyscale, 3 to RGB; None
    picks 1 if every image is greyscale and 3 otherwise.
    """
    Image = _pil()
    unknown = [c for c in list_classes(folder) if c not in classes]
    if unknown:
        raise DataError(f"{folder} has classes {unknown} that the training folder lacks")
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        d = folder / cls
        if d.is_dir():
            files += [
                (f, label)
                for f in sorted(d.rglob("*"))
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            ]
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
    if channels is None:  # header-only pass: Image.open does not decode the pixels
        grey = True
        for f, _ in files:
            try:
                with Image.open(f) as im:
                    grey = grey and im.mode in ("1", "L", "I", "I;16", "F")
            except Exception as exc:
                raise DataError(f"cannot decode image {f}: {exc}") from exc
            if not grey:
                break
        channels = 1 if grey else 3
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    mode = "L" if channels == 1 else "RGB"
    arrays: list[np.ndarray] = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                img = im.convert(mode)
                if image_size is not None and img.size != (image_size, image_size):
                    img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
                a = np.asarray(img, dtype=np.uint8)
        except Exception as exc:
            raise DataError(f"cannot decode image {f}: {exc}") from exc
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if arrays and a.shape != arrays[0].shape:
            raise DataError(
                f"{f} is {a.shape[2]}x{a.shape[1]} but earlier images are "
                f"{arrays[0].shape[2]}x{arrays[0].shape[1]}; pass image_size=... to resize"
            )
        arrays.append(a)
    labels = np.array([lab for _, lab in files], dtype=np.int64)
    return np.stack(arrays), labels

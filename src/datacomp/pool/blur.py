"""Face blurring from normalised bounding boxes (DATACOMP.md §3.2, the ImageNet face-obfuscation recipe).

CommonPool stores, per sample, ``face_bboxes``: a list of ``[x_min, y_min, x_max, y_max]`` in
[0, 1] relative to the image. The reference blurs them at download time:

1. each box is scaled to pixels (truncated to int) and grown by 10 % of its larger side on every
   edge, then clipped to the image;
2. a binary mask covers the grown boxes;
3. σ = 0.1 × the largest box side over all boxes; Gaussian kernel size ``2·ceil(4σ) + 1``;
4. both the image and the mask are Gaussian-blurred; output = ``img·(1−m̃) + blur(img)·m̃``.

``blur_faces`` is used by the resharder (``--apply-blur``) and, through :class:`ReferenceBlurrer`,
by the download stage in place of img2dataset 1.47.0's own blurrer (whose kernel size differs
from the reference's), so both paths produce the same pixels.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import ConfigError


def _cv2():
    try:
        import cv2  # opencv-python-headless, brought by the ``download`` extra (img2dataset)
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("face blurring needs OpenCV: pip install 'datacomp[download]'") from None
    return cv2


def blur_faces(img: np.ndarray, bboxes: Sequence[Sequence[float]] | None) -> np.ndarray:
    """Blur ``bboxes`` (normalised x1, y1, x2, y2) in an HxW or HxWxC uint8 image; returns uint8."""
    if bboxes is None or len(bboxes) == 0:
        return img
    cv2 = _cv2()
    h, w = img.shape[:2]
    mask = np.zeros(img.shape, dtype=np.float32)
    largest = 0
    for box in bboxes:
        if box is None or len(box) != 4:
            continue
        x1, y1, x2, y2 = (int(float(box[0]) * w), int(float(box[1]) * h), int(float(box[2]) * w), int(float(box[3]) * h))
        side = max(x2 - x1, y2 - y1)
        largest = max(largest, side)
        grow = 0.1 * side
        x1, y1, x2, y2 = int(x1 - grow), int(y1 - grow), int(x2 + grow), int(y2 + grow)
        x1, x2 = (int(np.clip(v, 0, w - 1)) for v in (x1, x2))
        y1, y2 = (int(np.clip(v, 0, h - 1)) for v in (y1, y2))
        mask[y1:y2, x1:x2, ...] = 1.0
    if largest <= 0:
        return img
    sigma = 0.1 * largest
    ksize = int(2 * math.ceil(4 * sigma)) + 1
    f = img.astype(np.float32) / 255.0
    blurred = cv2.GaussianBlur(f, (ksize, ksize), sigmaX=sigma, sigmaY=sigma)
    m = cv2.GaussianBlur(mask, (ksize, ksize), sigmaX=sigma, sigmaY=sigma)
    if m.ndim < f.ndim:  # cv2 drops a trailing channel axis of size 1
        m = m.reshape(f.shape)
        blurred = blurred.reshape(f.shape)
    out = f * (1.0 - m) + blurred * m
    return (out * 255.0).astype(np.uint8)


class ReferenceBlurrer:
    """Drop-in for img2dataset's ``BoundingBoxBlurrer``: ``blurrer(img=..., bbox_list=...)``."""

    def __call__(self, img: np.ndarray, bbox_list) -> np.ndarray:
        return blur_faces(img, bbox_list)


def blur_encoded(data: bytes, bboxes, fmt: str = "webp", quality: int = 100) -> tuple[bytes, str]:
    """Decode image bytes, blur, re-encode (``webp`` like the reference resharder, or ``jpg``).

    Returns (bytes, extension). Raises ValueError when the bytes are not a decodable image.
    """
    cv2 = _cv2()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("image decoding error")
    out = blur_faces(img, bboxes)
    if fmt == "webp":
        ok, buf = cv2.imencode(".webp", out, [int(cv2.IMWRITE_WEBP_QUALITY), int(quality)])
    elif fmt in ("jpg", "jpeg"):
        ok, buf = cv2.imencode(".jpg", out, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
        fmt = "jpg"
    else:
        raise ConfigError(f"unknown re-encode format '{fmt}' (choose webp or jpg)")
    if not ok:
        raise ValueError("image encoding error")
    return buf.tobytes(), fmt


__all__ = ["blur_faces", "blur_encoded", "ReferenceBlurrer"]

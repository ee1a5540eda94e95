"""Decoding an eval set's images in DataLoader workers: each image read straight from its offset
in the tar (or from the blobs of a parquet / arrow eval set), decoded and preprocessed; one
that fails to decode is skipped and counted."""
from __future__ import annotations

import io
import os
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from .dataset import EvalSet


class ImageDataset(Dataset):
    """Decode + preprocess the images of one eval set (map-style, safe for worker processes).

    Items are ``(index, tensor)`` or ``(index, None)`` when the image fails to decode.
    """

    def __init__(self, evalset: EvalSet, preprocess: Callable[[Any], torch.Tensor]):
        self.paths = [str(p) for p in evalset.shards]
        self.locs = [(s.shard, s.offset, s.size) for s in evalset.samples]
        self.blobs = evalset.blob_loader() if evalset.blob_loader is not None else None
        self.preprocess = preprocess
        self._files: dict[int, Any] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.locs)

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if shard < 0:
            return self.blobs[offset]
        if self._pid != os.getpid():  # fresh handles in each worker process
            self._files = {}
            self._pid = os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.paths[shard], "rb")
        f.seek(offset)
        return f.read(size) if size >= 0 else f.read()

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        from PIL import Image

        try:
            data = self._read(*self.locs[i])
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return i, self.preprocess(im)
        except Exception:  # noqa: BLE001 - any undecodable image is skipped and counted
            return i, None

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = {}
        state["_pid"] = None
        return state


def collate_images(batch: list[tuple[int, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """-> (indices of decoded images, stacked images or None, number that failed to decode)."""
    ok = [(i, x) for i, x in batch if x is not None]
    idx = torch.tensor([i for i, _ in ok], dtype=torch.long)
    images = torch.stack([x for _, x in ok]) if ok else None
    return idx, images, len(batch) - len(ok)

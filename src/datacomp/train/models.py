"""open_clip model configurations and loading: bundled configs -> ``local-dir:`` folders.

open_clip 3.3.0's ``local-dir:DIR`` schema reads ``DIR/open_clip_config.json``, which must hold
``{"model_cfg": {...}, "preprocess_cfg": {...}}`` (``preprocess_cfg`` optional: size, mode, mean,
std, interpolation, resize_mode, fill_color), and loads full-model weights from the first of
``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``, ... found directly in ``DIR``
(a state dict, or a dict with ``state_dict``; a DDP ``module.`` prefix is stripped). With the
``local-dir:`` schema the ``pretrained=`` argument is ignored, so a training checkpoint stored
elsewhere has to be loaded explicitly: :func:`load_open_clip` does that.

Bundled configs live in ``resources/models/<name>.json`` in exactly that file format.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from ..config import model_config_path
from ..errors import ConfigError, FormatError, InputError
from ..formats.atomic import atomic_path, write_json

log = logging.getLogger(__name__)

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_pytorch_model.bin"  # a name open_clip's local-dir loader prefers
LOCAL_DIR = "local-dir:"


def is_bundled(model: str) -> bool:
    return model_config_path(model) is not None


def read_open_clip_config(f: Path) -> dict[str, Any]:
    """A local ``open_clip_config.json`` (what open_clip's ``local-dir:`` loader reads), checked:
    a missing file, bad JSON or no ``model_cfg`` is a one-line error naming the file."""
    if not f.is_file():
        raise InputError(f"{f}: open_clip model config does not exist")
    try:
        cfg = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{f}: not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or "model_cfg" not in cfg:
        raise FormatError(f"{f}: open_clip config has no 'model_cfg'")
    return cfg


def open_clip_config(model: str) -> dict[str, Any]:
    """The ``open_clip_config.json`` content for a bundled config, an open_clip built-in name or a local dir."""
    p = model_config_path(model)
    if p is not None:
        cfg = json.loads(p.read_text())
        return {"model_cfg": cfg["model_cfg"], "preprocess_cfg": cfg.get("preprocess_cfg", {})}
    local = _local_dir(model)
    if local is not None:
        return read_open_clip_config(local / CONFIG_NAME)
    from open_clip.factory import get_model_config
    from open_clip.transform import PreprocessCfg

    model_cfg = get_model_config(model)
    if model_cfg is None:
        raise ConfigError(f"unknown model '{model}' (not bundled in resources/models/, not an open_clip model, not a local dir)")
    pre = asdict(PreprocessCfg())
    pre["size"] = model_cfg.get("vision_cfg", {}).get("image_size", pre["size"])
    return {"model_cfg": model_cfg, "preprocess_cfg": pre}


def materialise(model: str, out_dir: str | os.PathLike, state_dict: Any = None) -> Path:
    """Write ``out_dir/open_clip_config.json`` for ``model`` (+ weights when given): a local-dir folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = open_clip_config(model)
    cfg = {**cfg, "datacomp": {"source": model}}
    write_json(out / CONFIG_NAME, cfg)
    if state_dict is not None:
        save_weights(state_dict, out / WEIGHTS_NAME)
    return out


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically and reproducibly: through a file object, so the zip's record
    names are torch's fixed "archive/..." and not the stem of the temporary file's random name."""
    import torch

    with atomic_path(path, suffix=Path(path).suffix) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def save_weights(state_dict: Any, path: str | os.PathLike) -> None:
    save_torch({(k[7:] if k.startswith("module.") else k): v for k, v in state_dict.items()}, path)


def _local_dir(model: str) -> Path | None:
    if model.startswith(LOCAL_DIR):
        return Path(model[len(LOCAL_DIR):])
    p = Path(model)
    if (p / CONFIG_NAME).is_file():
        return p
    return None


def load_open_clip(model: str, checkpoint: str | os.PathLike | None = None, device: str = "cpu") -> tuple[Any, Callable, Callable]:
    """``(model.eval(), preprocess_val, tokenizer)`` for a bundled name, an open_clip name or a local dir,
    with weights from ``checkpoint`` (a local file: an open_clip_train checkpoint or a state dict).

    Nothing is downloaded: an open_clip pretrained *tag* needs the weights in the local cache.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import open_clip

    if checkpoint is not None and not Path(checkpoint).is_file():
        if Path(str(checkpoint)).suffix or os.sep in str(checkpoint) or not _is_tag(model, str(checkpoint)):
            raise InputError(f"{checkpoint}: checkpoint file does not exist")
    local = _local_dir(model)
    if is_bundled(model) and local is None:
        with tempfile.TemporaryDirectory(prefix="datacomp-model-") as d:
            materialise(model, d)
            return load_open_clip(f"{LOCAL_DIR}{d}", checkpoint, device)
    try:
        if local is not None:
            if not (local / CONFIG_NAME).is_file():
                raise InputError(f"{local / CONFIG_NAME}: open_clip model config does not exist")
            name = f"{LOCAL_DIR}{local}"
            m, _, pre = open_clip.create_model_and_transforms(name, device=device, load_weights=checkpoint is None)
            if checkpoint is not None:
                try:
                    open_clip.load_checkpoint(m, str(checkpoint))
                except RuntimeError as e:
                    raise InputError(f"{checkpoint}: checkpoint is from another architecture than {local} ({_mismatch(e)})") from None
            tok = open_clip.get_tokenizer(name)
        else:
            m, _, pre = open_clip.create_model_and_transforms(model, pretrained=str(checkpoint) if checkpoint else None, device=device)
            tok = open_clip.get_tokenizer(model)
    except RuntimeError as e:
        if "state_dict" in str(e) and checkpoint is not None:
            raise InputError(f"{checkpoint}: checkpoint is from another architecture than {model} ({_mismatch(e)})") from None
        if "not found in built-ins" in str(e):
            raise ConfigError(f"unknown model '{model}' (not bundled, not an open_clip model, not a local dir)") from None
        raise
    m.eval()
    return m, pre, tok


def _mismatch(e: Exception) -> str:
    """The first concrete line of a load_state_dict error ('size mismatch for x: ...', 'Missing key(s) ...')."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    detail = next((l for l in lines[1:] if "size mismatch" in l), None) or (lines[1] if len(lines) > 1 else lines[0] if lines else "")
    return detail[:200].rstrip(".")


def _is_tag(model: str, tag: str) -> bool:
    try:
        import open_clip

        return tag in open_clip.list_pretrained_tags_by_model(model)
    except Exception:
        return False


@functools.lru_cache(maxsize=4)
def cached_open_clip(model: str, checkpoint: str | None, device: str = "cpu") -> tuple[Any, Callable, Callable]:
    """Per-process cache of :func:`load_open_clip` (executor workers embed many shards with one model)."""
    return load_open_clip(model, checkpoint, device)

"""open_clip model configurations and loading: bundled configs -> ``local-dir:`` folders.

open_clip 3.3.0's ``local-dir:DIR`` schema reads ``DIR/open_clip_config.json``, which must hold
``{"model_cfg": {...}, "preprocess_cfg": {...}}`` (``preprocess_cfg`` optional: size, mode, mean,
std, interpolation, resize_mode, fill_color), and loads full-model weights from the first of
``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``, ... found directly in ``DIR``
(a state dict, or a dict with ``state_dict``; a DDP ``module.`` prefix is stripped). With the
``local-dir:`` schema the ``pretrained=`` argument is ignored, so a training checkpoint stored
elsewhere has to be loaded explicitly: :func:`load_open_clip` does that.

:func:`load_model` loads a training run's model (its ``model/`` config and final checkpoint) for
evaluation; :func:`cached_open_clip` is the per-process cache embedding workers use;
:func:`read_state_dict` / :func:`check_checkpoint` check a checkpoint before anything is written.

Bundled configs live in ``resources/models/<name>.json`` in exactly that file format.
"""
from __future__ import annotations

import contextlib
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
LATEST = "epoch_latest.pt"  # open_clip_train's most recent checkpoint, in RUN/checkpoints/


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
            with _quiet_random_init() if checkpoint is not None else contextlib.nullcontext():
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


class _DropRandomInitWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("no CLIP weights found" in msg or "initialized randomly" in msg)


@contextlib.contextmanager
def _quiet_random_init():
    """open_clip warns that a model built without weights is random; the checkpoint comes right after."""
    root = logging.getLogger()
    f = _DropRandomInitWarnings()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


def read_state_dict(ck: Path) -> dict[str, Any]:
    """The model state dict of a torch checkpoint (``module.`` prefixes removed, tensors memory-mapped
    where the format allows); a one-line InputError/FormatError for a missing or unreadable file."""
    import torch

    if not ck.is_file():
        raise InputError(f"{ck}: checkpoint file does not exist")
    try:
        state = torch.load(ck, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        try:  # the legacy (non-zip) format cannot be memory-mapped
            state = torch.load(ck, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FormatError(f"{ck}: not a readable torch checkpoint ({type(e).__name__})") from None
    sd = state.get("state_dict", state) if isinstance(state, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise FormatError(f"{ck}: no model state dict in the checkpoint")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def check_checkpoint(checkpoint: str | os.PathLike, model_dir: str | os.PathLike) -> None:
    """One-line :class:`InputError` unless ``checkpoint`` holds weights for the model in ``model_dir``
    (same parameter names and shapes; the model is built on the meta device, no memory or time)."""
    import torch

    ck = Path(checkpoint)
    sd = read_state_dict(ck)
    import open_clip

    with torch.device("meta"):
        model = open_clip.create_model(f"{LOCAL_DIR}{model_dir}", load_weights=False, device="meta")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(getattr(v, "shape", ())) for k, v in sd.items()}
    name = json.loads((Path(model_dir) / CONFIG_NAME).read_text()).get("datacomp", {}).get("source", str(model_dir))
    missing = sorted(set(want) - set(got))
    bad = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or bad:
        what = (f"parameter {bad[0]} has shape {list(got[bad[0]])}, the model needs {list(want[bad[0]])}" if bad
                else f"{len(missing)} parameter(s) missing, e.g. {missing[0]}")
        raise InputError(f"{ck}: checkpoint is from another architecture than {name} ({what})")


def load_model(run_dir: str | os.PathLike, device: str = "cpu",
               checkpoint: str | os.PathLike | None = None) -> tuple[Any, Callable, Callable]:
    """``(model.eval(), preprocess_val, tokenizer)`` of a finished training run (or any local-dir folder):
    the one loader of a run, which evaluation uses (``datacomp.evaluate.model.default_loader``).

    Uses ``run_dir/model/open_clip_config.json`` with ``checkpoint`` (default: the one named in
    ``info.json``, else ``run_dir/checkpoints/epoch_latest.pt``, else the weights in ``model/``).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"{run}: training run directory does not exist")
    model_dir = run / "model" if (run / "model" / CONFIG_NAME).is_file() else run
    if not (model_dir / CONFIG_NAME).is_file():
        raise InputError(f"{run}: not a training run (no model/{CONFIG_NAME})")
    read_open_clip_config(model_dir / CONFIG_NAME)  # checked here: open_clip's own errors name no file
    if checkpoint is None:
        checkpoint = run_checkpoint(run)
        if checkpoint == model_dir / WEIGHTS_NAME:
            checkpoint = None  # the local-dir loader reads it
    return load_open_clip(f"{LOCAL_DIR}{model_dir}", checkpoint, device)


def run_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The weights :func:`load_model` evaluates for a run: the checkpoint named in ``info.json``,
    else ``checkpoints/epoch_latest.pt``, else ``model/open_clip_pytorch_model.bin``."""
    run = Path(run_dir)
    model_dir = run / "model" if (run / "model" / CONFIG_NAME).is_file() else run
    info = run / "info.json"
    cands = []
    if info.is_file():
        try:
            cands.append(Path(json.loads(info.read_text())["checkpoint"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    cands += [run / "checkpoints" / LATEST, model_dir / WEIGHTS_NAME]
    found = next((c for c in cands if c.is_file()), None)
    if found is None:
        raise InputError(f"{run}: no checkpoint (checkpoints/{LATEST} or model/{WEIGHTS_NAME})")
    return found

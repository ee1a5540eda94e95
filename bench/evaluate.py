"""Time our evaluation against clip_benchmark's on the same model and the same local wds tasks.

    .venv/bin/python bench/evaluate.py [--model ViT-S-32] [--scale 1.0] [--modes cli,inprocess]

Builds, in a temporary directory, a random-init open_clip model (one checkpoint file, read by
both) and three clip_benchmark-layout tasks: two zero-shot classification sets (many classes x
18 templates; few classes x 8 templates) and one retrieval set (5 captions per image), JPEG
images. Then, per mode:

- ``cli``: what a user runs. ``clip_benchmark eval`` (one call for the classification sets, one
  for retrieval; fp32 with --no_amp as on our CPU path) vs ``evaluate()`` in a fresh Python
  process; wall time of the whole command, imports and model loads included.
- ``inprocess``: the engines only. clip_benchmark's Python entry points (wds builder,
  zero_shot_classifier, run_classification, zeroshot_retrieval.evaluate) with the model loaded
  once, vs our ``zeroshot_classification`` / ``zeroshot_retrieval`` with the same model object.

Prints the timings, the speed ratio and the metric agreement (acc1, acc5, mean per-class recall,
recalls) per task.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES_18 = [
    "a photo of a {c}.", "a bad photo of a {c}.", "a photo of many {c}.", "a sculpture of a {c}.",
    "a rendering of a {c}.", "graffiti of a {c}.", "a cropped photo of the {c}.", "a tattoo of a {c}.",
    "a bright photo of a {c}.", "a photo of a clean {c}.", "a photo of a dirty {c}.", "a dark photo of the {c}.",
    "a drawing of a {c}.", "a photo of my {c}.", "the plastic {c}.", "a photo of the cool {c}.",
    "a close-up photo of a {c}.", "a black and white photo of the {c}.",
]
WORDS = ["red", "striped", "wooden", "tiny", "ancient", "spotted", "glass", "golden", "wild", "paper"]
NOUNS = ["fox", "kettle", "bicycle", "lantern", "heron", "teapot", "violin", "cactus", "tractor", "owl",
         "anchor", "beetle", "compass", "dolphin", "easel", "falcon", "guitar", "hammer", "igloo", "jaguar"]

PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
              "interpolation": "bicubic", "resize_mode": "shortest", "size": 224}


def jpeg(rng: np.random.Generator, size: int = 256) -> bytes:
    from PIL import Image

    small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def make_cls(ev: Path, key: str, n_classes: int, templates: list[str], n: int, shards: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = ev / key.replace("/", "-")
    names = [f"{WORDS[i % len(WORDS)]} {NOUNS[(i // len(WORDS)) % len(NOUNS)]}" for i in range(n_classes)]
    (d / "test").mkdir(parents=True)
    (d / "classnames.txt").write_text("\n".join(names) + "\n")
    (d / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    (d / "test" / "nshards.txt").write_text(f"{shards}\n")
    per = np.array_split(np.arange(n), shards)
    for s, ids in enumerate(per):
        members = []
        for j in ids:
            members += [(f"s{j:06d}.jpg", jpeg(rng)), (f"s{j:06d}.cls", str(int(rng.integers(0, n_classes))).encode())]
        write_tar(d / "test" / f"{s}.tar", members)


def make_retrieval(ev: Path, key: str, n: int, shards: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = ev / key.replace("/", "-")
    (d / "test").mkdir(parents=True)
    (d / "dataset_type.txt").write_text("retrieval\n")
    (d / "test" / "nshards.txt").write_text(f"{shards}\n")
    for s, ids in enumerate(np.array_split(np.arange(n), shards)):
        members = []
        for j in ids:
            caps = [f"a {WORDS[(j + c) % 10]} {NOUNS[(j * 3 + c) % 20]} next to a {NOUNS[(j + 2 * c) % 20]} in picture {j}"
                    for c in range(5)]
            members += [(f"r{j:06d}.jpg", jpeg(rng)), (f"r{j:06d}.txt", "\n".join(caps).encode())]
        write_tar(d / "test" / f"{s}.tar", members)


def build(work: Path, model_name: str, scale: float) -> dict:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(model_name)
    ckpt = work / "model.pt"
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, ckpt)
    run = work / "run"
    (run / "model").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "model" / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": open_clip.get_model_config(model_name), "preprocess_cfg": PREPROCESS}))
    os.link(ckpt, run / "checkpoints" / "epoch_latest.pt")
    ev = work / "evalsets"
    tasks = {
        "synth/concepts": dict(n_classes=40, templates=TEMPLATES_18, n=int(400 * scale), shards=2, seed=1),
        "synth/count": dict(n_classes=8, templates=TEMPLATES_18[:8], n=int(200 * scale), shards=2, seed=2),
    }
    for k, kw in tasks.items():
        make_cls(ev, k, **kw)
    make_retrieval(ev, "synth/retrieval", n=int(150 * scale), shards=2, seed=3)
    return {"ckpt": ckpt, "run": run, "ev": ev}


class Clock:
    """Wall time and CPU time (user + system, this process and its reaped children: the
    subprocesses and DataLoader workers). On a shared machine CPU seconds are the steadier
    measure of work done; wall time is what a user waits."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    @staticmethod
    def _cpu() -> float:
        import resource

        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    def __enter__(self) -> "Clock":
        self._w, self._c = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += self._cpu() - self._c


def sh(cmd: list[str], env: dict, clock: Clock) -> None:
    with clock:
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode:
        sys.exit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-3000:]}")


def mode_cli(b: dict, work: Path, model_name: str, workers: int, bs: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    cb = str(Path(sys.executable).parent / "clip_benchmark")
    common = ["--model", model_name, "--pretrained", str(b["ckpt"]), "--dataset_root", str(b["ev"]) + "/{dataset_cleaned}",
              "--no_amp", "--batch_size", str(bs), "--num_workers", str(workers),
              "--output", str(work / "cb_{dataset}_{task}.json")]
    t_cb, t_ours = Clock(), Clock()
    sh([cb, "eval", "--dataset", "wds/synth/concepts", "wds/synth/count", "--task", "zeroshot_classification",
        *common], env, t_cb)
    sh([cb, "eval", "--dataset", "wds/synth/retrieval", "--task", "zeroshot_retrieval", "--recall_k", "1", "5", "10",
        *common], env, t_cb)
    out = work / "ours.jsonl"
    code = (f"from datacomp.evaluate import evaluate; evaluate({str(b['run'])!r}, {str(b['ev'])!r}, out={str(out)!r}, "
            f"workers={workers}, batch_size={bs})")
    sh([sys.executable, "-c", code], env, t_ours)
    ref = {}
    for k, task in (("synth/concepts", "zeroshot_classification"), ("synth/count", "zeroshot_classification"),
                    ("synth/retrieval", "zeroshot_retrieval")):
        ref[k] = json.loads((work / f"cb_{k.replace('/', '_')}_{task}.json").read_text())["metrics"]
    ours = {json.loads(line)["key"]: json.loads(line)["metrics"] for line in out.read_text().splitlines()}
    return {"t_cb": t_cb, "t_ours": t_ours, "ref": ref, "ours": ours}


def mode_inprocess(b: dict, model_name: str, workers: int, bs: int) -> dict:
    import open_clip
    from clip_benchmark.datasets.builder import build_dataset, image_captions_collate_fn
    from clip_benchmark.metrics import zeroshot_classification as zsc
    from clip_benchmark.metrics import zeroshot_retrieval as zsr

    from datacomp.evaluate import open_evalset
    from datacomp.train import load_model
    from datacomp.evaluate.zeroshot import zeroshot_classification, zeroshot_retrieval

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(b["ckpt"]))
    model.eval()
    tok = open_clip.get_tokenizer(model_name)
    ref, ours = {}, {}
    t_cb, t_ours = Clock(), Clock()
    t_cb.__enter__()
    for k in ("synth/concepts", "synth/count"):
        ds = build_dataset(f"wds/{k}", root=str(b["ev"] / k.replace("/", "-")), transform=preprocess, split="test",
                           download=False)
        dl = torch.utils.data.DataLoader(ds.batched(bs), batch_size=None, shuffle=False, num_workers=workers)
        ref[k] = zsc.evaluate(model, dl, tok, ds.classes, ds.templates, "cpu", amp=False)
    ds = build_dataset("wds/synth/retrieval", root=str(b["ev"] / "synth-retrieval"), transform=preprocess, split="test",
                       download=False, task="zeroshot_retrieval")
    dl = torch.utils.data.DataLoader(ds.batched(bs, collation_fn=image_captions_collate_fn), batch_size=None,
                                     shuffle=False, num_workers=workers)
    ref["synth/retrieval"] = zsr.evaluate(model, dl, tok, "cpu", amp=False, recall_k_list=[1, 5, 10])
    del dl
    t_cb.__exit__()

    model2, preprocess2, tok2 = load_model(b["run"])
    t_ours.__enter__()
    for k in ("synth/concepts", "synth/count"):
        ours[k], _ = zeroshot_classification(model2, preprocess2, tok2, open_evalset(b["ev"], k), bs, workers)
    ours["synth/retrieval"], _ = zeroshot_retrieval(model2, preprocess2, tok2, open_evalset(b["ev"], "synth/retrieval"),
                                                    bs, workers)
    t_ours.__exit__()
    return {"t_cb": t_cb, "t_ours": t_ours, "ref": ref, "ours": ours}


METRICS = {
    "synth/concepts": ["acc1", "acc5", "mean_per_class_recall"],
    "synth/count": ["acc1", "acc5", "mean_per_class_recall"],
    "synth/retrieval": [f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)],
}


def report(name: str, r: dict, sizes: dict) -> list[str]:
    cb, us = r["t_cb"], r["t_ours"]
    lines = [f"[{name}] wall: clip_benchmark {cb.wall:.1f} s, ours {us.wall:.1f} s, speed-up {cb.wall / us.wall:.2f}x | "
             f"CPU: clip_benchmark {cb.cpu:.1f} s, ours {us.cpu:.1f} s, ratio {cb.cpu / us.cpu:.2f}x"]
    for k, ms in METRICS.items():
        diffs = []
        for m in ms:
            a, b = r["ours"][k].get(m), r["ref"][k].get(m)
            diffs.append(f"{m} {a:.4f}/{b:.4f}" if a is not None and b is not None else f"{m} {a}/{b}")
        worst = max(abs(r["ours"][k][m] - r["ref"][k][m]) for m in ms if r["ref"][k].get(m) is not None)
        lines.append(f"  {k} (n={sizes[k]}): ours/clip_benchmark " + ", ".join(diffs)
                     + f"; max |diff| {worst:.5f} (one sample = {1 / sizes[k]:.5f})")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-S-32")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the number of images per task")
    ap.add_argument("--modes", default="cli,inprocess")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workdir", default=None, help="keep the generated data here (default: a temp dir)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.workdir) if a.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        b = build(work, a.model, a.scale)
        from datacomp.evaluate import open_evalset

        sizes = {k: open_evalset(b["ev"], k).size for k in METRICS}
        sizes["synth/retrieval"] = open_evalset(b["ev"], "synth/retrieval").n_captions  # finest unit
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
              f"threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}, "
              f"load average before {os.getloadavg()[0]:.1f}")
        print(f"model {a.model} (random init), batch {a.batch_size}, {a.workers} loader workers; tasks: "
              + ", ".join(f"{k} {open_evalset(b['ev'], k).size} images" for k in METRICS))
        for mode in a.modes.split(","):
            r = mode_cli(b, work, a.model, a.workers, a.batch_size) if mode == "cli" else mode_inprocess(
                b, a.model, a.workers, a.batch_size)
            print("\n".join(report(mode, r, sizes)) + f"\n  load average after: {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()

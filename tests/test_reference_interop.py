"""Drop-in for the reference, both ways (issue 15): our files read by the reference's rules, the
reference's files read by us, and the reference's flags with the reference's meaning.

The reference's shard listing (``train.py`` ``get_input_shards``) is re-implemented below from
its documented behaviour: a directory's tars are grouped by the name before their trailing
digits and expanded to ``{0..max}`` with the same zero padding; a sub-directory holding a
resharder ``meta.json`` contributes ``{fmt(0)..fmt(output_shard_count - 1)}`` with the
``output_shard_format`` read from that file's top level; other sub-directories are recursed.
"""
from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import subprocess
import sys
import tarfile
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import datacomp
from datacomp import cli
from datacomp.errors import ConfigError, FormatError, InputError
from datacomp.formats.pool import write_metadata, write_npz
from datacomp.formats.shards import ShardWriter, sample_key
from datacomp.formats.uids import make_subset, uids_to_pairs, write_subset

N_SHARDS, PER_SHARD = 4, 5
UIDS = [[f"{s * 100 + i + 1:032x}" for i in range(PER_SHARD)] for s in range(N_SHARDS)]
ALL = [u for shard in UIDS for u in shard]
CHOSEN = ALL[::2] + [ALL[3]] * 2  # ALL[3] three times in all
BOX = [[0.1, 0.2, 0.5, 0.6]]

# the reference resharder's meta.json: every argument (str()-ed), its counters, cwd
REFERENCE_ARGS = ["input_dir", "output_dir", "subset_file", "num_shards", "first_shard", "num_workers", "shard_size",
                  "shard_format", "output_shard_format", "shard_stats_format", "output_shard_stats_format",
                  "shard_table", "write_shard_table", "shuffle_bufsize", "blur_metadata_map", "apply_blur",
                  "inject_blur_metadata", "reencode_webp_quality", "dry_run", "overwrite", "verbose", "quiet"]
REFERENCE_STATE = ["processed_count", "output_count", "blur_count", "blur_time", "output_shard_count", "worker_success"]


def _jpeg(i: int) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.new("RGB", (8, 8), (30 * i % 256, 80, 160)).save(b, format="JPEG")
    return b.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A pool of 4 img2dataset-style shards (5 samples each; face boxes on every third row) and a
    subset that takes every other sample and one sample three times."""
    root = tmp_path_factory.mktemp("interop")
    pool = root / "pool"
    for s in range(N_SHARDS):
        n = PER_SHARD
        write_metadata(pool / "metadata" / f"{s:08d}.parquet", pa.table({
            "uid": UIDS[s],
            "url": [f"http://x/{s}/{i}.jpg" for i in range(n)],
            "text": [f"a photo of a red star number {i}" for i in range(n)],
            "original_width": [300] * n, "original_height": [300] * n,
            "face_bboxes": pa.array([BOX if (s * n + i) % 3 == 0 else [] for i in range(n)],
                                    pa.list_(pa.list_(pa.float64()))),
        }))
        rng = np.random.default_rng(s)
        write_npz(pool / "metadata" / f"{s:08d}.npz",
                  {k: (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)
                   for k, v in ((k, rng.normal(size=(n, 8))) for k in ("b32_img", "b32_txt", "l14_img", "l14_txt"))})
        with ShardWriter(pool / "shards" / f"{s:08d}.tar") as w:
            for i, u in enumerate(UIDS[s]):
                w.write(sample_key(s, i), {"jpg": _jpeg(s * n + i), "txt": f"caption {u}".encode(),
                                           "json": json.dumps({"uid": u, "key": sample_key(s, i)}).encode()})
    write_subset(root / "subset.npy", make_subset(uids_to_pairs(CHOSEN)))
    return root


def _expected_keys(uids: list[str]) -> list[str]:
    return sorted(f"{u}-{j}" for u in dict.fromkeys(uids) if u in CHOSEN for j in range(CHOSEN.count(u)))


# ---- the reference's shard listing, re-implemented ---------------------------------------------------

def reference_input_shards(data_dir: Path) -> str:
    """``train.py`` ``get_input_shards`` for a local directory: the '::'-joined brace patterns."""
    if data_dir.suffix == ".tar":
        return str(data_dir)
    parts, prefix_map = [], defaultdict(list)
    for f in data_dir.iterdir():
        if f.suffix == ".tar":
            stem = str(f.with_suffix(""))
            m = re.search(r"\d+$", stem)
            prefix_map[stem[: m.start()]].append(stem[m.start():])
        elif f.is_dir():
            meta = f / "meta.json"
            if meta.exists():
                md = json.loads(meta.read_text())
                count, fmt = md["output_shard_count"], md["output_shard_format"]  # KeyError if missing
                first, last = fmt.format(0).replace(".tar", ""), fmt.format(count - 1).replace(".tar", "")
                parts.append(str(f / f"{{{first}..{last}}}.tar"))
            else:
                parts.extend(reference_input_shards(f).split("::"))
    for prefix in sorted(prefix_map):
        last = max(int(x) for x in prefix_map[prefix])
        zeros = len(prefix_map[prefix][0])
        parts.append(prefix + f"{{{0:0{zeros}d}..{last:0{zeros}d}}}.tar")
    return "::".join(parts)


def _expand(pattern: str) -> list[Path]:
    out = []
    for part in pattern.split("::"):
        m = re.search(r"\{(\d+)\.\.(\d+)\}", part)
        if m is None:
            out.append(Path(part))
            continue
        width = len(m.group(1))
        out += [Path(part[: m.start()] + f"{i:0{width}d}" + part[m.end():]) for i in range(int(m.group(1)), int(m.group(2)) + 1)]
    return out


def _tar_samples(tars: list[Path]) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for t in tars:
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return samples


def test_reference_train_lists_our_reshard_split_over_nodes(world: Path, tmp_path: Path):
    """--first-shard / --num-shards split the reshard over two 'nodes'; the reference's train.py
    listing of their parent directory names exactly the subset's samples, once per occurrence."""
    pool, subset, parent = world / "pool", world / "subset.npy", tmp_path / "shards"
    m0 = datacomp.reshard(pool, subset, parent / "node0", shard_size=2, workers=1, first_shard=0, num_shards=2)
    m1 = datacomp.reshard(pool, subset, parent / "node1", shard_size=2, workers=1, first_shard=2, num_shards=2)
    assert m0.params["input_shards"] == ["00000000.tar", "00000001.tar"]
    assert m1.params["input_shards"] == ["00000002.tar", "00000003.tar"]
    meta = json.loads((parent / "node1" / "meta.json").read_text())
    assert set(REFERENCE_ARGS + REFERENCE_STATE + ["cwd"]) <= set(meta)
    assert all(isinstance(meta[k], str) for k in REFERENCE_ARGS)  # str()-ed, as the reference writes them
    assert meta["first_shard"] == "2" and meta["num_shards"] == "2" and meta["output_shard_format"] == "{:08d}.tar"
    assert meta["output_shard_count"] == m1.counts["output_shard_count"] and meta["processed_count"] == 2 * PER_SHARD
    tars = _expand(reference_input_shards(parent))
    assert all(t.is_file() for t in tars) and len(tars) == m0.counts["output_shard_count"] + m1.counts["output_shard_count"]
    samples = _tar_samples(tars)
    assert sorted(samples) == _expected_keys(ALL)
    assert all(json.loads(s["json"])["uid"] == k.rsplit("-", 1)[0] for k, s in samples.items())
    # our own training-data discovery reads the same parent directory the same way
    from datacomp.train import find_train_data

    assert sorted(map(str, find_train_data(parent).shards)) == sorted(map(str, tars))
    with pytest.raises(InputError, match="no input shard numbered 9..9"):
        datacomp.reshard(pool, subset, tmp_path / "none", first_shard=9, num_shards=1)


def test_shards_without_stats_are_skipped_and_named(world: Path, tmp_path: Path, capsys):
    """A tar without _stats.json (an unfinished download) is skipped, counted and named, as the
    reference skips it; --include-unfinished reads it."""
    import shutil

    pool = tmp_path / "pool"
    shutil.copytree(world / "pool", pool)
    (pool / "shards" / "00000001_stats.json").unlink()
    rc = cli.main(["reshard", "--pool", str(pool), "--subset", str(world / "subset.npy"), "--out", str(tmp_path / "a"),
                   "--workers", "1"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"]["skipped_unfinished_shard_count"] == 1
    assert printed["skipped_unfinished_shards"] == ["00000001.tar"]
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["skipped_unfinished_shards"] == ["00000001.tar"] and meta["processed_count"] == 3 * PER_SHARD
    keys = sorted(_tar_samples(sorted((tmp_path / "a").glob("*.tar"))))
    assert keys == _expected_keys(UIDS[0] + UIDS[2] + UIDS[3])
    m = datacomp.reshard(pool, world / "subset.npy", tmp_path / "b", workers=1, include_unfinished=True)
    assert m.counts["skipped_unfinished_shard_count"] == 0
    assert sorted(_tar_samples(sorted((tmp_path / "b").glob("*.tar")))) == _expected_keys(ALL)
    for p in (pool / "shards").glob("*_stats.json"):
        p.unlink()
    with pytest.raises(InputError, match="every input shard lacks its _stats.json.*--include-unfinished"):
        datacomp.reshard(pool, world / "subset.npy", tmp_path / "c", workers=1)


def test_dry_run_writes_nothing_and_counts_like_a_run(world: Path, tmp_path: Path):
    out = tmp_path / "dry"
    dry = datacomp.reshard(world / "pool", world / "subset.npy", out, shard_size=3, workers=1, dry_run=True)
    assert not out.exists() and dry.extra["dry_run"]
    real = datacomp.reshard(world / "pool", world / "subset.npy", tmp_path / "real", shard_size=3, workers=1)
    for k, v in dry.counts.items():
        assert real.counts[k] == v, k
    assert dry.counts["output_count"] == len(CHOSEN) and dry.counts["output_shard_count"] == -(-len(CHOSEN) // 3)


def test_inject_blur_metadata(world: Path, tmp_path: Path):
    """face_bboxes from the metadata go into the json of the samples with faces; images untouched."""
    m = datacomp.reshard(world / "pool", world / "subset.npy", tmp_path / "inj", shard_size=4, workers=1,
                         inject_blur_metadata=True)
    plain = _tar_samples(sorted((tmp_path / "inj").glob("*.tar")))
    with_faces = {u for s in range(N_SHARDS) for i, u in enumerate(UIDS[s]) if (s * PER_SHARD + i) % 3 == 0}
    injected = 0
    for key, sample in plain.items():
        meta = json.loads(sample["json"])
        uid = key.rsplit("-", 1)[0]
        assert ("face_bboxes" in meta) == (uid in with_faces)
        if uid in with_faces:
            assert meta["face_bboxes"] == BOX and meta["uid"] == uid
            injected += 1
        assert sample["jpg"] == _jpeg(ALL.index(uid))
    assert injected and m.counts["injected_bbox_count"] == len({u for u in CHOSEN if u in with_faces})
    assert m.counts["blur_count"] == 0


# ---- centroid and target files -----------------------------------------------------------------------

class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _numpy1_style(src: Path, dst: Path) -> None:
    """A torch.save(ndarray) file as NumPy 1 writes it (``numpy.core.multiarray._reconstruct``)."""
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    entries[pkl] = entries[pkl].replace(b"numpy._core.multiarray\n_reconstruct", b"numpy.core.multiarray\n_reconstruct")
    assert b"numpy.core.multiarray" in entries[pkl]
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for n, data in entries.items():
            z.writestr(n, data)


def test_reference_centroid_file_loads_and_a_malicious_pickle_is_refused(world: Path, tmp_path: Path, capsys):
    import torch

    from datacomp.filters.ops.clusters import load_matrix
    from datacomp.formats.tensorfile import RefusedPickle, load_tensor_file

    cents = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    torch.save(cents, tmp_path / "small_centroids_l14.pt")  # how image_based_clustering.py saves them
    _numpy1_style(tmp_path / "small_centroids_l14.pt", tmp_path / "np1_centroids_l14.pt")
    for name in ("small_centroids_l14.pt", "np1_centroids_l14.pt"):
        assert np.array_equal(load_matrix(tmp_path / name, "centroids"), cents)
    torch.save({"image_features": torch.from_numpy(cents).half()}, tmp_path / "in1k_clip_vit_l14_0.pt")
    assert np.allclose(load_matrix(tmp_path / "in1k_clip_vit_l14_0.pt", "target embeddings"), cents, atol=1e-2)
    with open(tmp_path / "plain.pt", "wb") as f:
        pickle.dump(cents, f)
    assert np.array_equal(load_tensor_file(tmp_path / "plain.pt"), cents)

    marker = tmp_path / "pwned"
    torch.save({"image_features": torch.zeros(2, 8), "x": _Payload(marker)}, tmp_path / "evil_zip.pt")
    with open(tmp_path / "evil_plain.pt", "wb") as f:
        pickle.dump(_Payload(marker), f)
    for name in ("evil_zip.pt", "evil_plain.pt"):
        with pytest.raises(RefusedPickle, match=rf"{name}: refused to load centroids: .*names posix.system") as e:
            load_matrix(tmp_path / name, "centroids")
        assert "\n" not in str(e.value)
    with pytest.raises(FormatError, match="holds list"):
        torch.save([1, 2], tmp_path / "list.pt")
        load_tensor_file(tmp_path / "list.pt")
    # through the CLI: one line on stderr, exit 2, the payload never ran
    rc = cli.main(["filter", "--pool", str(world / "pool"), "--recipe", "image_based", "--out", str(tmp_path / "s.npy"),
                   "--set", f"centroids={tmp_path / 'evil_zip.pt'}", "--set", f"targets={tmp_path / 'small_centroids_l14.pt'}",
                   "--workers", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "refused to load centroids" in err and "posix.system" in err
    assert not marker.exists()


# ---- filter: the reference's metadata_dir, the fastText model ------------------------------------------

def test_filter_takes_a_bare_metadata_dir_and_a_model_path(world: Path, tmp_path: Path, capsys):
    from datacomp.filters.ops.language import bundled_model_path
    from datacomp.formats.uids import read_subset

    model = tmp_path / "lid.176.ftz"  # stands in for the reference's lid.176.bin: any fastText model file
    model.write_bytes(bundled_model_path().read_bytes())
    args = ["--recipe", "basic_filter", "--workers", "1"]
    assert cli.main(["filter", "--pool", str(world / "pool"), "--out", str(tmp_path / "a.npy"), *args]) == 0
    assert cli.main(["filter", "--pool", str(world / "pool" / "metadata"), "--out", str(tmp_path / "b.npy"),
                     "--set", f"model={model}", *args]) == 0
    a, b = read_subset(tmp_path / "a.npy"), read_subset(tmp_path / "b.npy")
    assert len(a) == len(ALL) and np.array_equal(a, b)
    assert json.loads((tmp_path / "b.json").read_text())["params"]["recipe"]["steps"][0]["model"] == str(model)
    capsys.readouterr()
    assert cli.main(["filter", "--pool", str(world / "pool" / "metadata"), "--out", str(tmp_path / "c.npy"),
                     "--set", f"model={tmp_path / 'lid.176.bin'}", *args]) == 2
    err = capsys.readouterr().err
    assert "lid.176.bin: fastText language model file does not exist" in err and err.count("\n") == 1


# ---- eval sets in the reference's layout ---------------------------------------------------------------

def test_reference_layout_evalsets_round_trip(tmp_path: Path, monkeypatch):
    """download-evalsets --layout reference writes wds_<task>_test/ (what the reference's
    evaluate.py --data_dir reads); we read it back, and read our layout beside it."""
    import shutil

    from test_evaluate import make_cls_task

    from datacomp.evaluate import check_evalsets, download as dl, open_evalset

    remote = tmp_path / "remote"
    make_cls_task(remote, "vtab/dtd", n_classes=4, per_shard=[3, 2])

    class FakeHub:
        @staticmethod
        def hf_hub_download(repo_id, repo_type, filename, local_dir, token=None):
            assert repo_id == "djghosh/wds_vtab-dtd_test"
            out = Path(local_dir) / filename
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(remote / "vtab-dtd" / filename, out)
            return str(out)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(dl, "_hub", lambda: FakeHub)
    ev = tmp_path / "ev"
    res = dl.download_evalsets(ev, ["vtab/dtd"], layout="reference")
    assert res["layout"] == "reference" and (ev / "wds_vtab-dtd_test" / "test" / "1.tar").is_file()
    assert not (ev / "vtab-dtd").exists()
    es = open_evalset(ev, "vtab/dtd")
    assert es.size == 5 and es.root == ev / "wds_vtab-dtd_test"
    # the same files under our name read the same; a fairness task drops its prefix in the reference's name
    shutil.copytree(ev / "wds_vtab-dtd_test", tmp_path / "ours" / "vtab-dtd")
    assert open_evalset(tmp_path / "ours", "vtab/dtd").size == 5
    check = check_evalsets(ev, ["vtab/dtd"])
    assert [r["key"] for r in check["present"]] == ["vtab/dtd"] and not check["missing"]
    from datacomp.evaluate import get_task

    assert get_task("fairness/fairface").reference_dirname == "wds_fairface_test"
    with pytest.raises(InputError, match="unknown eval-set layout 'theirs'"):
        dl.download_evalsets(ev, ["vtab/dtd"], layout="theirs")


# ---- train: the reference's flags ------------------------------------------------------------------------

def test_train_reference_flags(tmp_path: Path, capsys):
    from open_clip_train.params import parse_args

    from datacomp.train import train

    d = tmp_path / "d"
    d.mkdir()
    for i in range(2):
        (d / f"{i:08d}.tar").write_bytes(b"")
    (tmp_path / "in1k_val").mkdir()
    cmd = train("small", d, tmp_path / "o", print_args=True, device="cpu", num_checkpoints=8, save_frequency=2,
                grad_clip_norm=1.0, log_every_n_steps=7, imagenet_val=tmp_path / "in1k_val")
    args = cmd[3:]
    opt = lambda flag: args[args.index(flag) + 1]  # noqa: E731
    assert opt("--epochs") == "8" and opt("--train-num-samples") == str(12_800_000 // 8)
    assert opt("--save-frequency") == "2" and opt("--grad-clip-norm") == "1" and opt("--log-every-n-steps") == "7"
    assert opt("--imagenet-val") == str(tmp_path / "in1k_val")
    ns = parse_args(args)  # open_clip's own parser takes every one of them
    assert ns.epochs == 8 and ns.grad_clip_norm == 1.0 and ns.save_frequency == 2 and ns.imagenet_val
    assert "8 epochs x 1600000" in capsys.readouterr().out
    default = train("small", d, tmp_path / "o", print_args=True, device="cpu")[3:]
    assert "--grad-clip-norm" not in default and "--imagenet-val" not in default
    assert default[default.index("--epochs") + 1] == "5" and default[default.index("--save-frequency") + 1] == "0"
    with pytest.raises(ConfigError, match="--grad-clip-norm must be a positive"):
        train("small", d, tmp_path / "o", print_args=True, grad_clip_norm=-1.0)
    with pytest.raises(InputError, match="--imagenet-val needs an ImageNet validation folder"):
        train("small", d, tmp_path / "o", print_args=True, imagenet_val=tmp_path / "nope")
    assert cli.main(["train", "--scale", "small", "--data", str(d), "--out", str(tmp_path / "o"), "--print-args",
                     "--device", "cpu", "--num-checkpoints", "3", "--log-every-n-steps", "9"]) == 0
    out = capsys.readouterr().out
    assert "--epochs 3" in out and "--log-every-n-steps 9" in out
    assert cli.main(["train", "--scale", "small", "--data", str(d), "--out", str(tmp_path / "o"), "--print-args",
                     "--num-checkpoints", "0"]) == 2


# ---- CLI conventions and the Python API ---------------------------------------------------------------------

def test_verbosity_levels_and_quiet(monkeypatch, capsys):
    assert cli.log_levels(0, False) == (logging.INFO, logging.WARNING)
    assert cli.log_levels(1, False) == (logging.DEBUG, logging.WARNING)  # -v: ours only
    assert cli.log_levels(2, False) == (logging.DEBUG, logging.DEBUG)  # -vv: the libraries too
    assert cli.log_levels(0, True) == (logging.WARNING, logging.WARNING)
    ours = logging.getLogger("datacomp")
    monkeypatch.setattr(ours, "level", ours.level)  # restored after the test
    monkeypatch.setenv("DATACOMP_PROGRESS", "1")
    assert cli.main(["-q", "info", "scales"]) == 0
    assert ours.level == logging.WARNING and os.environ["DATACOMP_PROGRESS"] == "0"
    assert "small" in capsys.readouterr().out  # results still print
    assert cli.main(["-vv", "info", "scales"]) == 0 and ours.level == logging.DEBUG
    assert cli.main(["-v", "-q", "info", "scales"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_top_level_help_and_cheap_python_api():
    text = cli.build_parser().format_help()
    assert "download | byod  ->  embed  ->  filter  ->  reshard  ->  train  ->  evaluate  ->  report" in text
    assert "on real pools:" in text and "embedded world only: synth, run" in text
    probe = ("import sys, datacomp; heavy = [m for m in ('numpy', 'torch', 'pyarrow', 'open_clip') if m in sys.modules]; "
             "print(heavy, callable(datacomp.reshard), datacomp.filter.__name__)")
    env = {**os.environ, "PYTHONPATH": str(Path(datacomp.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["[]", "True", "run_filter"]
    import inspect

    assert "first_shard" in inspect.signature(datacomp.reshard).parameters
    for name in datacomp.__all__[1:]:
        assert callable(getattr(datacomp, name)), name

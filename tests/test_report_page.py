"""`datacomp report`: the page built from small work directories in `datacomp run`'s layout.

Every test builds its inputs with tests/report_world.py (no training) and reads the page back
with the standard library's HTML parser.
"""
from __future__ import annotations

import html
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.parquet as pq

import report_world as rw
from datacomp.cli import main
from datacomp.evaluate.registry import load_tasks
from datacomp.report.build import build_report
from datacomp.report.published import load_published


class Page(HTMLParser):
    """Tables (heading text before each -> rows of cell texts), image sources, headings."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.images: list[str] = []
        self.headings: list[str] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._heading: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append((self.headings[-1] if self.headings else "", []))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(a["src"])
        elif tag in ("h1", "h2", "h3", "h4"):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1][1].append(self._row)
            self._row = None
        elif tag in ("h1", "h2", "h3", "h4") and self._heading is not None:
            self.headings.append("".join(self._heading))
            self._heading = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._heading is not None:
            self._heading.append(data)

    def table(self, heading_start: str) -> list[dict[str, str]]:
        for h, rows in self.tables:
            if h.startswith(heading_start):
                return [dict(zip(rows[0], r)) for r in rows[1:]]
        raise AssertionError(f"no table under a heading starting {heading_start!r}; have {[h for h, _ in self.tables]}")


def _page(out: Path) -> Page:
    return Page((out / "index.html").read_text())


def test_page_holds_every_part(tmp_path: Path):
    wd = rw.make_world(tmp_path / "w")
    rep = build_report([wd], tmp_path / "out")
    assert rep.notes == []
    page = _page(tmp_path / "out")
    results = page.table("Results")
    assert [r["recipe"] for r in results] == ["basic_filter", "no_filter", "chance"]
    assert {"Concepts", "Concept shifts", "Long tail", "Retrieval", "Worst group", "Attributes", "Average",
            "concepts", "retrieval"} <= set(results[0])
    kept = rw.kept_rows(wd, "basic_filter")
    assert kept == [i for i in range(rw.N) if rw.basic_filter_reason(i) is None]
    assert results[0]["subset size"] == f"{len(kept):,}"
    # the chance row: 1/classes from the world's tasks.json, 1/images for retrieval
    assert results[-1]["concepts"] == f"{1 / 24:.3f}" and results[-1]["retrieval"] == f"{1 / 50:.3f}"
    assert {"Filter funnel", "Score distributions, kept vs dropped", "Ground truth: what each subset is made of",
            "Samples", "basic_filter: kept", "basic_filter: dropped"} <= set(page.headings)
    assert any(h.startswith("Published baselines") for h in page.headings)
    funnel = {r["rule"]: r for r in page.table("Filter funnel")}
    assert funnel["language == en"] == {"recipe": "basic_filter", "rule": "language == en", "marginal": "14",
                                        "sequential": "14"}  # rows 0, 3, ..., 39
    assert funnel["image_min_side >= 200"]["marginal"] == "10" and funnel["image_min_side >= 200"]["sequential"] == "7"
    plots = {Path(s).name for s in page.images if s.startswith("plots/")}
    assert plots == {"e0-average-vs-size.svg", "e0-per-task.svg", "e0-loss.svg", "e0-funnel.svg", "e0-scores.svg",
                     "e0-truth.svg"}
    thumbs = [s for s in page.images if s.startswith("samples/")]
    assert len(thumbs) == 3 * 8  # basic_filter: 8 kept + 8 dropped; no_filter: 8 kept, drops nothing
    for src in page.images:
        assert (tmp_path / "out" / src).is_file(), src
    assert "http://" not in (tmp_path / "out" / "index.html").read_text().replace("http://x/", "")


def test_samples_say_which_rule_dropped_them(tmp_path: Path):
    wd = rw.make_world(tmp_path / "w")
    build_report([wd], tmp_path / "out")
    text = (tmp_path / "out" / "index.html").read_text()
    section = text[text.index(">basic_filter: dropped<"):]
    cards = re.findall(r'<div class="card dropped"><img src="[^"]+" alt="([0-9a-f]{32})">.*?'
                       r'<div class="why">dropped by ([^<]*)</div>', section)
    assert len(cards) == 8
    row_of = {u: i for i, u in enumerate(rw.uids(0))}
    for uid, why in cards:
        assert html.unescape(why) == rw.basic_filter_reason(row_of[uid]), uid
    assert 'class="why"' not in text[:text.index(">basic_filter: dropped<")]  # kept cards give no reason


def test_ground_truth_table_matches_the_truth_parquet(tmp_path: Path):
    wd = rw.make_world(tmp_path / "w")
    build_report([wd], tmp_path / "out")
    table = {r["subset"]: r for r in _page(tmp_path / "out").table("Ground truth")}
    truth = pq.read_table(wd / "pool" / "truth" / "00000000.parquet").to_pylist()
    for recipe in ("no_filter", "basic_filter"):
        kept = [t for i, t in enumerate(truth) if i in set(rw.kept_rows(wd, recipe))]
        row = table[recipe]
        assert row["rows"] == str(len(kept))
        assert row["caption: other language"] == str(sum(t["caption_kind"] == "foreign" for t in kept))
        assert row["caption: mismatched"] == str(sum(t["caption_kind"] == "mismatched" for t in kept))
        assert row["image: text-only"] == str(sum(t["image_kind"] == "textonly" for t in kept))
        assert row["image: banner"] == str(sum(t["image_kind"] == "banner" for t in kept))
        clean = sum(t["clean"] for t in kept)
        assert row["clean precision"] == f"{100 * clean / len(kept):.1f}%"
        assert row["clean recall"] == f"{100 * clean / sum(t['clean'] for t in truth):.1f}%"
        assert row["duplicates"] == str(sum(t["duplicate_of"] is not None for t in kept))
        assert row["eval copies"] == f"{sum(t['eval_copy'] is not None for t in kept)} / " \
                                     f"{sum(t['eval_copy'] is not None for t in truth)}"
    assert table["(pool)"]["rows"] == str(rw.N)


def test_rebuild_gives_identical_bytes_and_drops_stale_files(tmp_path: Path):
    wd = rw.make_world(tmp_path / "w")
    build_report([wd], tmp_path / "a")
    build_report([wd], tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                   if p.is_file() and p.name != "manifest.json")  # the stage's record: its own timings
    assert len(files) > 10
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    stale = tmp_path / "a" / "plots" / "old.svg"
    stale.write_text("<svg/>")
    build_report([wd], tmp_path / "a")
    assert not stale.exists() and (tmp_path / "a" / "index.html").read_bytes() == (tmp_path / "b" / "index.html").read_bytes()


def test_seeds_give_mean_std_and_counts(tmp_path: Path):
    wd = tmp_path / "w"
    for s in (0, 1, 2):
        rw.make_world(wd / f"seed-{s}", seed=s)
    shutil.rmtree(wd / "seed-2" / "runs" / "basic_filter")  # one seed lacks a recipe
    build_report([wd], tmp_path / "out")
    rows = {r["recipe"]: r for r in _page(tmp_path / "out").table("Results")}
    assert rows["no_filter"]["seeds"] == "3" and rows["basic_filter"]["seeds"] == "2"
    # concepts = 0.1 + 0.02 * seed (+ 0.05 for basic_filter, the second recipe): mean 0.120 ± 0.020 over 0,1,2
    assert rows["no_filter"]["concepts"] == "0.120 ± 0.020"
    assert rows["basic_filter"]["concepts"] == "0.160 ± 0.014"
    assert "seed 0's world" in " ".join(_page(tmp_path / "out").headings)


def test_a_new_run_adds_rows(tmp_path: Path):
    wd = rw.make_world(tmp_path / "w", recipes={"no_filter": rw.RECIPES["no_filter"]})
    build_report([wd], tmp_path / "out")
    assert [r["recipe"] for r in _page(tmp_path / "out").table("Results")] == ["no_filter", "chance"]
    rw.add_run(wd, "oracle", 0, offset=0.2)  # as a second `datacomp run --recipes oracle` leaves it
    rep = build_report([wd], tmp_path / "out")
    assert [r["recipe"] for r in _page(tmp_path / "out").table("Results")] == ["no_filter", "oracle", "chance"]
    assert any("subsets/oracle.npy: subset missing" in n for n in rep.notes)


def test_reference_scale_run_shows_the_papers_rows(tmp_path: Path):
    run = tmp_path / "small" / "basic_filter"
    run.mkdir(parents=True)
    keys = [t.key for t in load_tasks("datacomp") if t.scored]
    assert len(keys) == 38
    rw.write_results(run, 0, tasks=keys)
    (run / "manifest.json").write_text(json.dumps({"stage": "train", "params": {"scale": {"name": "small"}},
                                                   "counts": {"unique_samples": 3_000_000}}))
    other = tmp_path / "small" / "no_filter"  # a second run beside it: the same table
    shutil.copytree(run, other)
    rep = build_report([tmp_path / "small"], tmp_path / "out")
    assert rep.notes == []
    page = _page(tmp_path / "out")
    rows = page.table("Published baselines at scale 'small'")
    mine = [r for r in rows if r["source"] == "yours"]
    paper = [r for r in rows if r["source"].startswith("paper")]
    assert [r["recipe"] for r in mine] == ["basic_filter", "no_filter"] and mine[0]["size"] == "3,000,000"
    assert mine[0]["Average (38)"] != "-"
    published = [p for p in load_published() if p.scale == "small"]
    assert len(paper) == len(published) > 0
    p0 = published[0]
    assert paper[0]["recipe"] == f"{p0.baseline} [{p0.recipe}]" and paper[0]["Average (38)"] == f"{p0.avg38:.3f}"
    assert page.table("Results")[0]["IN1k"] != "-"


def _one_line(notes: list[str]) -> None:
    assert notes and all("\n" not in n for n in notes)


def test_workdir_without_runs(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    rep = build_report([tmp_path / "empty"], tmp_path / "out")
    _one_line(rep.notes)
    assert "no runs found" in rep.notes[0] and str(tmp_path / "empty") in rep.notes[0]
    text = (tmp_path / "out" / "index.html").read_text()
    assert "no runs found" in text and "No runs were found" in text


def test_run_without_results_and_torn_line(tmp_path: Path):
    wd = rw.make_world(tmp_path / "w")
    (wd / "runs" / "no_filter" / "eval_results.jsonl").unlink()
    res = wd / "runs" / "basic_filter" / "eval_results.jsonl"
    res.write_text(res.read_text() + '{"key": "synth/extra", "dat')
    rep = build_report([wd], tmp_path / "out")
    _one_line(rep.notes)
    assert any(f"{wd / 'runs' / 'no_filter'}: no eval results" in n for n in rep.notes)
    assert any(f"{res}: ignored a torn last line" in n for n in rep.notes)
    page = _page(tmp_path / "out")
    assert [r["recipe"] for r in page.table("Results")] == ["basic_filter", "chance"]
    assert "Samples" in page.headings  # the pool-based parts are still there for both recipes
    assert "no_filter: kept" in page.headings


def test_missing_pool(tmp_path: Path):
    wd = rw.make_world(tmp_path / "w")
    shutil.rmtree(wd / "pool")
    rep = build_report([wd], tmp_path / "out")
    _one_line(rep.notes)
    assert any(f"{wd / 'pool'}: pool not found" in n for n in rep.notes)
    page = _page(tmp_path / "out")
    assert len(page.table("Results")) == 3 and "Filter funnel" in page.headings
    assert "Samples" not in page.headings


def test_missing_images_in_shards(tmp_path: Path):
    wd = rw.make_world(tmp_path / "w")
    (wd / "pool" / "shards" / "00000000.tar").unlink()
    rep = build_report([wd], tmp_path / "out")
    _one_line(rep.notes)
    assert any("sampled images not found in the pool's shards" in n for n in rep.notes)
    assert "no image" in (tmp_path / "out" / "index.html").read_text()


def test_cli_report(tmp_path: Path, capsys):
    wd = rw.make_world(tmp_path / "w")
    (tmp_path / "nothing").mkdir()
    assert main(["report", str(wd), str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 0
    cap = capsys.readouterr()
    assert f"wrote {tmp_path / 'out' / 'index.html'}" in cap.out
    assert cap.err.count("datacomp report: note:") == 1 and "no runs found" in cap.err
    assert main(["report", str(wd)]) == 0
    assert (wd / "report" / "index.html").is_file()

"""``datacomp info scales | tasks | recipes``: the bundled registries, as tables or JSON."""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any


def _rows(what: str) -> list[dict[str, Any]]:
    if what == "scales":
        from .config import load_scale, scale_names

        rows = []
        for name in scale_names():
            s = load_scale(name)
            d = asdict(s)
            d.pop("world", None)
            d.pop("teachers", None)
            d["steps"] = s.steps
            rows.append(d)
        return rows
    if what == "tasks":
        from .evaluate.registry import load_tasks

        return [t.to_json() if hasattr(t, "to_json") else dict(t) for t in load_tasks()]
    if what == "recipes":
        from .filters import list_ops_and_recipes
        from .filters.reference_subsets import PSEUDO_RECIPES

        return ([{"kind": k, "name": n, "description": d} for k, n, d in list_ops_and_recipes()]
                + [{"kind": "run-only", "name": n, "description": d} for n, d in PSEUDO_RECIPES.items()])
    raise ValueError(what)


def show(what: str, as_json: bool = False) -> None:
    rows = _rows(what)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        return
    cols = {
        "scales": ["name", "pool_size", "samples_seen", "model", "batch_size", "lr", "warmup", "beta2", "steps"],
        "tasks": ["key", "name", "type", "main_metric", "group"],
        "recipes": ["kind", "name", "description"],
    }[what]
    cols = [c for c in cols if c in rows[0]]
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, int) and v >= 100000:
        return f"{v:,}"
    return str(v)

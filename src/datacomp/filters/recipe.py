"""YAML recipes -> a validated plan.

A recipe file::

    name: clip_score_l14_30
    description: one line
    params: {fraction: 0.3, threshold: null}   # overridable (`--set fraction=0.2`)
    one_of: [[fraction, threshold]]              # overriding one member clears the others
    steps:                                        # score steps, in order
      - op: clip_score
        arch: l14
      - op: quantile_threshold                    # a global step: a pool-wide pass
        column: clip_l14_similarity_score
        fraction: ${fraction}                     # ${param}: substituted when the recipe loads
        threshold: ${threshold}
        where: [language == en]                   # optional: rows the global step looks at
                                                  # (on a score step: rows it computes; others null)
    keep:                                         # rules; a row is kept when all hold
      - clip_l14_similarity_score >= @threshold   # @name: a value a global step computed

A rule is ``column OP value`` with OP one of ``== != > >= < <= in not in``; the value is a YAML
scalar (``en``, ``2``, ``3.0``), a YAML list for ``in``, or ``@name``. Every column a rule uses
must be made by a step, and every ``@name`` by an earlier global step.

Recipes compose: a recipe with ``intersect: [a, b]`` keeps the rows every member keeps, one with
``union: [a, b]`` the rows some member keeps (members are recipe names or paths, relative to the
composite's file). The members' steps are merged (a step two members share runs once), and their
parameters are the composite's: ``--set fraction=0.2`` reaches every member that has
``fraction``; ``params:`` in the composite changes the members' defaults.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import resource_path
from ..errors import ConfigError
from ..formats.strict_yaml import load_yaml
from .registry import GlobalOp, Op, OpParamError, ShardOp, all_ops

RULE_OPS = ("==", "!=", ">=", "<=", ">", "<", "not in", "in")
_RULE_RE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(==|!=|>=|<=|>|<|not\s+in\b|in\b)\s*(.+?)\s*$", re.S)
_PARAM_RE = re.compile(r"\$\{([A-Za-z_]\w*)\}")
RECIPE_KEYS = {"name", "description", "params", "one_of", "steps", "keep", "intersect", "union"}


@dataclass(frozen=True)
class Rule:
    column: str
    op: str
    value: Any = None  # a literal, or None when ``ref`` names a global value
    ref: str | None = None

    @property
    def text(self) -> str:
        rhs = f"@{self.ref}" if self.ref is not None else (self.value if isinstance(self.value, str) else repr(self.value))
        return f"{self.column} {self.op} {rhs}"

    def to_json(self) -> dict[str, Any]:
        return {"column": self.column, "op": self.op, "value": self.value, "ref": self.ref, "text": self.text}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Rule":
        return cls(d["column"], d["op"], d.get("value"), d.get("ref"))


@dataclass
class Step:
    op: Op
    where: list[Rule] = field(default_factory=list)  # global steps only

    @property
    def is_global(self) -> bool:
        return isinstance(self.op, GlobalOp)

    def to_json(self) -> dict[str, Any]:
        d = self.op.spec()
        if self.where:
            d["where"] = [r.text for r in self.where]
        return d


@dataclass
class Recipe:
    name: str
    description: str
    source: str  # the file it came from
    params: dict[str, Any]
    steps: list[Step]
    keep: list[Rule]
    # a union: a row is kept when all rules of some group hold (``keep`` is then empty)
    keep_any: list[list[Rule]] | None = None
    members: list[str] = field(default_factory=list)
    combine: str | None = None  # "intersect" | "union" for a composite recipe

    def resolved(self) -> dict[str, Any]:
        """The recipe after parameter substitution: what actually runs (recorded in the sidecar)."""
        d: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "params": self.params,
            "steps": [s.to_json() for s in self.steps],
            "keep": [r.text for r in self.keep],
        }
        if self.combine:
            d["combine"] = self.combine
            d["members"] = list(self.members)
        if self.keep_any is not None:
            d["keep_any"] = [[r.text for r in g] for g in self.keep_any]
        return d

    def rule_groups(self) -> list[tuple[str, list[Rule]]]:
        """(label, rules) per group for a union; one unlabelled group otherwise."""
        if self.keep_any is None:
            return [("", list(self.keep))]
        return [(m, g) for m, g in zip(self.members, self.keep_any)]

    def all_rules(self) -> list[Rule]:
        return [r for _, g in self.rule_groups() for r in g]

    def shard_steps(self) -> list[Step]:
        return [s for s in self.steps if not s.is_global]

    def global_steps(self) -> list[Step]:
        return [s for s in self.steps if s.is_global]


def recipes_dir() -> Path:
    return resource_path("recipes")


def recipe_names() -> list[str]:
    d = recipes_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def find_recipe(recipe: str | Path) -> Path:
    """A recipe name (bundled) or a path to a YAML file."""
    text = str(recipe)
    path = Path(text).expanduser()
    looks_like_path = path.suffix in (".yaml", ".yml") or "/" in text or "\\" in text
    if looks_like_path:
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file does not exist")
        return path
    bundled = recipes_dir() / f"{text}.yaml"
    if bundled.is_file():
        return bundled
    raise ConfigError(f"unknown recipe '{text}' (known: {', '.join(recipe_names())}; or pass a .yaml path)")


def _coerce(value: Any) -> Any:
    """CLI overrides arrive as strings ('0.25'); read them as YAML scalars."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def _substitute(obj: Any, params: dict[str, Any], where: str) -> Any:
    if isinstance(obj, dict):
        return {k: _substitute(v, params, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, params, where) for v in obj]
    if isinstance(obj, str):
        def lookup(name: str) -> Any:
            if name not in params:
                raise ConfigError(f"{where}: '${{{name}}}' is not a recipe parameter (params: {', '.join(params) or 'none'})")
            return params[name]

        whole = _PARAM_RE.fullmatch(obj.strip())
        if whole:
            return lookup(whole.group(1))  # keeps the parameter's type (number, null, list)
        return _PARAM_RE.sub(lambda m: str(lookup(m.group(1))), obj)
    return obj


def parse_rule(rule: Any, where: str) -> Rule:
    if isinstance(rule, dict):
        unknown = set(rule) - {"column", "op", "value"}
        if unknown or "column" not in rule or "op" not in rule:
            raise ConfigError(f"{where}: rule {rule!r} must have 'column', 'op' and 'value'")
        column, op, raw = rule["column"], str(rule["op"]), rule.get("value")
        op = " ".join(op.split())
    elif isinstance(rule, str):
        m = _RULE_RE.match(rule)
        if not m:
            raise ConfigError(f"{where}: cannot parse rule {rule!r} (expected 'column OP value', OP one of {', '.join(RULE_OPS)})")
        column, op, rhs = m.group(1), " ".join(m.group(2).split()), m.group(3)
        if rhs.startswith("@"):
            return Rule(column, op, None, rhs[1:].strip())
        try:
            raw = yaml.safe_load(rhs)
        except yaml.YAMLError:
            raw = rhs
        if isinstance(raw, bool) and rhs.lower() not in ("true", "false"):
            raw = rhs  # YAML 1.1 reads no/yes/on/off as booleans; here they are words (language 'no')
    else:
        raise ConfigError(f"{where}: a rule must be a string like 'caption_words > 2', got {rule!r}")
    if op not in RULE_OPS:
        raise ConfigError(f"{where}: unknown comparison {op!r} in rule {rule!r}")
    if isinstance(raw, str) and raw.startswith("@"):
        return Rule(column, op, None, raw[1:])
    if op in ("in", "not in"):
        if not isinstance(raw, list):
            raise ConfigError(f"{where}: rule {rule!r}: '{op}' needs a list value like [en, de]")
    elif isinstance(raw, (list, dict)) or raw is None:
        raise ConfigError(f"{where}: rule {rule!r}: '{op}' needs a number or a word")
    return Rule(column, op, raw, None)


# the recipe schema: key -> (allowed type(s), what the message calls it)
_SCHEMA: dict[str, tuple[type | tuple[type, ...], str]] = {
    "name": (str, "a string"),
    "description": (str, "a string"),
    "params": (dict, "a mapping of parameter names to values"),
    "one_of": (list, "a list of lists of parameter names"),
    "steps": (list, "a list of steps"),
    "keep": (list, "a list of rules (an empty list keeps every row)"),
    "intersect": (list, "a list of recipe names or paths"),
    "union": (list, "a list of recipe names or paths"),
}


def _read_raw(path: Path) -> dict[str, Any]:
    src = str(path)
    try:
        text = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{src}: cannot read recipe: {e.strerror}") from None
    raw = load_yaml(text, src)
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: a recipe must be a YAML mapping with 'steps' and 'keep'")
    odd = [k for k in raw if not isinstance(k, str)]
    if odd:
        raise ConfigError(f"{src}: recipe keys must be strings, got {odd[0]!r}")
    unknown = set(raw) - RECIPE_KEYS
    if unknown:
        raise ConfigError(f"{src}: unknown recipe key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(RECIPE_KEYS))})")
    for key, value in raw.items():
        kind, what = _SCHEMA[key]
        if value is not None and not isinstance(value, kind):
            raise ConfigError(f"{src}: '{key}' must be {what}, got {type(value).__name__} {value!r}"[:300])
    if not ("intersect" in raw or "union" in raw) and "keep" not in raw:
        raise ConfigError(f"{src}: the recipe has no 'keep' (write 'keep: []' to keep every row)")
    for group in raw.get("one_of") or []:
        if not isinstance(group, list) or not all(isinstance(p, str) for p in group):
            raise ConfigError(f"{src}: 'one_of' must be a list of lists of parameter names, got {group!r}")
    for i, spec in enumerate(raw.get("steps") or []):
        if not isinstance(spec, dict) or not isinstance(spec.get("op"), str):
            raise ConfigError(f"{src}: step {i + 1}: each step must be a mapping with an 'op' name, got {spec!r}"[:300])
        bad = [k for k in spec if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{src}: step {i + 1} ({spec['op']}): parameter names must be strings, got {bad[0]!r}")
    return raw


def _find_member(member: Any, parent: Path) -> Path:
    if not isinstance(member, str) or not member:
        raise ConfigError(f"{parent}: a member of intersect/union must be a recipe name or path, got {member!r}")
    rel = parent.parent / member
    if (member.endswith((".yaml", ".yml")) or "/" in member) and rel.is_file():
        return rel
    return find_recipe(member)


def _load_composite(path: Path, raw: dict[str, Any], overrides: dict[str, Any], stack: tuple[str, ...]) -> Recipe:
    src = str(path)
    kinds = [k for k in ("intersect", "union") if k in raw]
    if len(kinds) != 1:
        raise ConfigError(f"{src}: a recipe has either 'intersect' or 'union', not both")
    if raw.get("steps") or raw.get("keep") or raw.get("one_of"):
        raise ConfigError(f"{src}: a composite recipe ({kinds[0]}) has no steps, keep or one_of of its own")
    combine = kinds[0]
    members = raw[combine]
    if not isinstance(members, list) or len(members) < 1:
        raise ConfigError(f"{src}: '{combine}' must be a list of recipe names or paths")
    name = str(raw.get("name") or path.stem)
    own = dict(raw.get("params") or {})
    paths = [_find_member(m, path) for m in members]
    member_params: list[dict[str, Any]] = []
    for mp in paths:
        if str(mp.resolve()) in stack:
            raise ConfigError(f"{src}: recipe {mp} includes itself")
        member_params.append(dict(_read_raw(mp).get("params") or {}))
    known: dict[str, Any] = {}
    for mparams in member_params:
        for k, v in mparams.items():
            known.setdefault(k, v)
    bad_own = sorted(set(own) - set(known))
    if bad_own:
        raise ConfigError(f"{src}: params {', '.join(bad_own)} are not parameters of any member "
                          f"(members' parameters: {', '.join(sorted(known)) or 'none'})")
    overrides = {k: _coerce(v) for k, v in overrides.items()}
    bad = sorted(set(overrides) - set(known))
    if bad:
        raise ConfigError(f"{src}: unknown parameter(s) {', '.join(bad)} for recipe '{name}' "
                          f"(parameters: {', '.join(sorted(known)) or 'none'})")
    given = {**own, **overrides}
    loaded = [load_recipe(mp, {k: v for k, v in given.items() if k in mparams}, _stack=stack)
              for mp, mparams in zip(paths, member_params)]

    steps: list[Step] = []
    seen: dict[str, int] = {}
    made_columns: dict[str, str] = {}
    made_globals: dict[str, str] = {}
    for r in loaded:
        for st in r.steps:
            key = json.dumps([st.to_json()], sort_keys=True, default=str)
            if key in seen:
                continue
            outs = st.op.outputs()
            made = made_globals if st.is_global else made_columns
            for o in outs:
                if o in made:
                    raise ConfigError(f"{src}: members {made[o]} and {r.name} both make "
                                      f"{'global value' if st.is_global else 'column'} '{o}' with different settings "
                                      f"(give one of them another 'output')")
                made[o] = r.name
            seen[key] = len(steps)
            steps.append(st)
    params: dict[str, Any] = {}
    for r in loaded:
        for k, v in r.params.items():
            params.setdefault(k, v)
    if combine == "intersect":
        keep: list[Rule] = []
        texts: set[str] = set()
        for r in loaded:
            if r.keep_any is not None:
                raise ConfigError(f"{src}: member {r.name} is a union; intersect it in a recipe of its own first")
            for rule in r.keep:
                if rule.text not in texts:
                    texts.add(rule.text)
                    keep.append(rule)
        return Recipe(name=name, description=str(raw.get("description") or ""), source=src, params=params,
                      steps=steps, keep=keep, members=[r.name for r in loaded], combine=combine)
    groups = []
    for r in loaded:
        if r.keep_any is not None:
            raise ConfigError(f"{src}: member {r.name} is itself a union; list its members here instead")
        groups.append(list(r.keep))
    return Recipe(name=name, description=str(raw.get("description") or ""), source=src, params=params,
                  steps=steps, keep=[], keep_any=groups, members=[r.name for r in loaded], combine=combine)


def load_recipe(recipe: str | Path, overrides: dict[str, Any] | None = None, _stack: tuple[str, ...] = ()) -> Recipe:
    """Load, parameterise and validate a recipe; every problem is a ConfigError naming the file."""
    path = find_recipe(recipe)
    src = str(path)
    raw = _read_raw(path)
    if "intersect" in raw or "union" in raw:
        return _load_composite(path, raw, dict(overrides or {}), (*_stack, str(path.resolve())))
    name = str(raw.get("name") or path.stem)
    params = dict(raw.get("params") or {})
    one_of = [list(g) for g in (raw.get("one_of") or [])]
    for group in one_of:
        for p in group:
            if p not in params:
                raise ConfigError(f"{src}: one_of names '{p}', which is not in params")

    overrides = {k: _coerce(v) for k, v in (overrides or {}).items()}
    bad = sorted(set(overrides) - set(params))
    if bad:
        raise ConfigError(f"{src}: unknown parameter(s) {', '.join(bad)} for recipe '{name}' "
                          f"(parameters: {', '.join(params) or 'none'})")
    for group in one_of:
        given = [p for p in group if p in overrides and overrides[p] is not None]
        if given:
            for p in group:
                if p not in given:
                    params[p] = None
    params.update(overrides)
    for group in one_of:
        set_ = [p for p in group if params.get(p) is not None]
        if len(set_) != 1:
            raise ConfigError(f"{src}: exactly one of {', '.join(group)} must be set for recipe '{name}' "
                              f"(got {', '.join(f'{p}={params.get(p)!r}' for p in group)})")

    ops = all_ops()
    steps: list[Step] = []
    made_columns: dict[str, int] = {}
    made_globals: set[str] = set()
    for i, spec in enumerate(raw.get("steps") or []):
        where = f"{src}: step {i + 1}"
        if not isinstance(spec, dict) or "op" not in spec:
            raise ConfigError(f"{where}: each step must be a mapping with an 'op' key, got {spec!r}")
        spec = _substitute(copy.deepcopy(spec), params, where)
        op_name = spec.pop("op")
        if op_name not in ops:
            raise ConfigError(f"{where}: unknown op '{op_name}' (known: {', '.join(ops)})")
        where = f"{src}: step {i + 1} ({op_name})"
        where_rules = spec.pop("where", None)
        try:
            op = ops[op_name](**spec)
        except OpParamError as e:
            raise ConfigError(f"{where}: {e}") from None
        step = Step(op)
        for g in op.global_inputs():
            if g not in made_globals:
                raise ConfigError(f"{where}: reads global value '{g}', which no earlier global step makes "
                                  f"(made: {', '.join(sorted(made_globals)) or 'none'})")
        if isinstance(op, GlobalOp):
            for col in op.inputs():
                if col not in made_columns:
                    raise ConfigError(f"{where}: reads column '{col}', which no earlier step makes")
            for r in where_rules or []:
                rule = parse_rule(r, where)
                _check_rule(rule, made_columns, made_globals, where)
                step.where.append(rule)
            op.where_rules = [r.text for r in step.where]  # type: ignore[attr-defined]
            for g in op.outputs():
                if g in made_globals:
                    raise ConfigError(f"{where}: global value '{g}' is made twice")
                made_globals.add(g)
        else:
            assert isinstance(op, ShardOp)
            for r in where_rules or []:  # compute only on these rows; the others get null
                rule = parse_rule(r, where)
                _check_rule(rule, made_columns, made_globals, where)
                step.where.append(rule)
            op.where = list(step.where)  # type: ignore[attr-defined]
            for col in op.outputs():
                if col in made_columns:
                    raise ConfigError(f"{where}: column '{col}' is already made by step {made_columns[col] + 1}")
                made_columns[col] = i
        steps.append(step)

    keep: list[Rule] = []
    for r in _substitute(raw.get("keep") or [], params, f"{src}: keep"):
        rule = parse_rule(r, f"{src}: keep")
        _check_rule(rule, made_columns, made_globals, f"{src}: keep")
        keep.append(rule)
    return Recipe(name=name, description=str(raw.get("description") or ""), source=src,
                  params=params, steps=steps, keep=keep)


def _check_rule(rule: Rule, columns: dict[str, int], globals_: set[str], where: str) -> None:
    if rule.column not in columns:
        raise ConfigError(f"{where}: rule '{rule.text}' uses column '{rule.column}', which no step makes "
                          f"(made: {', '.join(columns) or 'none'})")
    if rule.ref is not None and rule.ref not in globals_:
        raise ConfigError(f"{where}: rule '{rule.text}' uses '@{rule.ref}', which no earlier global step makes "
                          f"(made: {', '.join(sorted(globals_)) or 'none'})")

"""Captions: alt-text-like English, other languages, mismatched and junk alt-text.

All wording comes from resources/world/language.yaml and the concept translations in
concepts.yaml. Functions take a ``random.Random`` and are deterministic given it.
"""
from __future__ import annotations

import random
import re
from typing import Any

from .scene import Scene
from .world import World

_SPACES = re.compile(r"\s+")
_HEX = "0123456789abcdef"


def _tidy(text: str) -> str:
    text = _SPACES.sub(" ", text).strip()
    return text.replace(" ,", ",").replace(" .", ".")


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def position_phrase(world: World, position: str) -> str:
    return world.language["positions"][position]


def count_object_phrase(count: int) -> str:
    """The generic count phrase shared with synth/count's class texts: 'one object', 'two objects'."""
    word = {1: "one", 2: "two", 3: "three"}[count]
    return f"{word} object" if count == 1 else f"{word} objects"


def english_np(scene: Scene, world: World, rng: random.Random, colour: bool = True, size: bool | None = None) -> str:
    c = world.concepts[scene.concept]
    words = []
    if size is None:
        size = rng.random() < 0.35
    if size:
        words.append(world.language["sizes"][scene.size])
    if colour:
        words.append(scene.colour)
    if scene.count == 1:
        words.append(c.name)
        det = "one" if rng.random() < 0.15 else article(words[0])
    else:
        words.append(c.plural)
        det = world.language["count_words"][scene.count]
    return " ".join([det, *words])


def _bg_phrase(scene: Scene, world: World, rng: random.Random) -> str:
    return rng.choice(world.language["background_phrases"][scene.background]).format(colour=scene.bg_colour)


def english(scene: Scene, world: World, rng: random.Random) -> str:
    """A fluent English alt-text describing ``scene``."""
    lang = world.language
    np_ = english_np(scene, world, rng, colour=rng.random() < float(lang["colour_rate"]))
    tmpl = rng.choice(lang["english_templates"])
    pos = position_phrase(world, scene.position)
    if scene.position == "center" and rng.random() < 0.6:
        pos = ""
    c = world.concepts[scene.concept]
    text = tmpl.format(np=np_, pos=pos, bg=_bg_phrase(scene, world, rng), name=c.name, plural=c.plural)
    gc = lang["generic_clause"]
    if rng.random() < float(gc["rate"]):
        form = rng.choice(gc["forms"])
        if "{pos}" in form and position_phrase(world, scene.position) in text:
            form = "{count} {objects}"
        clause = form.format(count=count_object_phrase(scene.count).split()[0],
                             objects="object" if scene.count == 1 else "objects",
                             an_object="an object" if scene.count == 1 else "objects",
                             pos=position_phrase(world, scene.position))
        text = f"{text}, {clause}"
    return _tidy(text)


def english_variants(scene: Scene, world: World, rng: random.Random, k: int) -> list[str]:
    """``k`` distinct English captions of one scene (retrieval ground truth)."""
    out: list[str] = []
    for _ in range(20 * k):
        t = english(scene, world, rng)
        if t not in out:
            out.append(t)
        if len(out) == k:
            break
    return out


def foreign(scene: Scene, world: World, rng: random.Random, lang: str, english_name: bool = False) -> str:
    """A caption about ``scene`` in another language (de, fr, es, it ...).

    ``english_name``: the object is named by its English word inside the foreign sentence, keeping
    the language's article ("ein dog in Rot", "deux kites de couleur rouge"), as web captions in
    other languages name products and objects with English words.
    """
    L = world.language["foreign"][lang]
    c = world.concepts[scene.concept]
    sg, pl = c.tr[lang]
    if english_name:
        art = sg.split(" ", 1)[0] if " " in sg else ""
        sg, pl = (f"{art} {c.name}" if art else c.name), c.plural
    colour = L["colours"][scene.colour]
    if scene.count == 1:
        np_ = L["np_one"].format(sg=sg, colour=colour)
    else:
        np_ = L["np_many"].format(count=L["count_words"][scene.count], pl=pl, colour=colour)
    tmpl = rng.choice(L["templates"])
    text = tmpl.format(np=np_, pos=L["positions"][scene.position], bg=L["backgrounds"][scene.background])
    text = _tidy(text)
    return text[0].upper() + text[1:]


def _fill_digits(pattern: str, rng: random.Random) -> str:
    def digits(n: int) -> str:
        return "".join(rng.choice("0123456789") for _ in range(n))

    out = pattern
    for n in (2, 3, 4, 5):
        while "{n%d}" % n in out:
            out = out.replace("{n%d}" % n, digits(n), 1)
    while "{hex8}" in out:
        out = out.replace("{hex8}", "".join(rng.choice(_HEX) for _ in range(8)), 1)
    return out


def junk(scene: Scene, world: World, rng: random.Random, kind: str) -> str:
    """Uninformative alt-text: file names, boilerplate, numbers, or 1-2 word fragments."""
    J = world.language["junk"]
    if kind == "filename":
        return _fill_digits(rng.choice(J["file_patterns"]), rng)
    if kind == "phrase":
        return rng.choice(J["phrases"])
    if kind == "number":
        return _fill_digits(rng.choice(J["numbers"]), rng)
    if kind == "fragment":
        c = world.concepts[scene.concept]
        forms = [c.name, f"{scene.colour} {c.name}", c.plural, f"{c.name} photo", f"{c.name.capitalize()}"]
        return rng.choice(forms)
    raise ValueError(f"unknown junk kind {kind!r}")


def boilerplate(world: World, rng: random.Random) -> str:
    """English web boilerplate unrelated to the image (no ImageNet-21k noun; see language.yaml)."""
    B = world.language["boilerplate"]
    t = rng.choice(B["templates"])
    t = t.replace("{month}", rng.choice(B["months"])).replace("{year}", str(rng.randint(2008, 2023)))
    t = t.replace("{n1}", str(rng.randint(3, 9)))
    return _fill_digits(t, rng)


def caption_for(kind: str, scene: Scene, world: World, rng: random.Random, noise: dict[str, Any],
                other: Scene | None = None) -> tuple[str, dict[str, Any]]:
    """Caption of ``kind`` for ``scene``; returns (text, truth fields)."""
    from .scene import pick

    if kind == "english":
        return english(scene, world, rng), {"caption_concept": scene.concept, "lang": "en"}
    if kind == "mismatched":
        assert other is not None
        return english(other, world, rng), {"caption_concept": other.concept, "lang": "en"}
    if kind == "foreign":
        lang = pick(rng, noise["foreign_languages"])
        en = rng.random() < float(noise.get("foreign_english_name", 0.0))
        return foreign(scene, world, rng, lang, en), {"caption_concept": scene.concept, "lang": lang,
                                                      "foreign_kind": "english_name" if en else "translated"}
    if kind == "boilerplate":
        return boilerplate(world, rng), {"caption_concept": -1, "lang": "en"}
    if kind == "junk":
        jk = pick(rng, noise["junk_kinds"])
        return junk(scene, world, rng, jk), {"caption_concept": scene.concept if jk == "fragment" else -1,
                                             "lang": "", "junk_kind": jk}
    raise ValueError(f"unknown caption kind {kind!r}")

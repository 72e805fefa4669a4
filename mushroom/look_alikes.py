"""Look-alikes: the species table's dangerous look-alikes, parsed, resolved against the table (in both
directions: a species lists X, or X lists the species) and graded, and which of them always block
"edible" (a deadly one, or a poisonous one in a stage or form such as an egg). Also the views of a
find that tell a species from its look-alikes. advice.advise and the page's bundle (app.rules_bundle)
both take them from here.
"""
from __future__ import annotations

import functools
import re
from typing import Iterable, Mapping, Sequence

from mushroom.answer_text import UNKNOWN_EDIBILITY
from mushroom.species import DANGEROUS_GRADES, Species

# A look-alike note naming one of these words describes a stage or form of the look-alike that no
# photo of its usual form teaches the model (species.csv: "Amanita phalloides (egg stage)"): a
# poisonous look-alike in such a form blocks "edible" like a deadly one.
STAGE_OR_FORM_WORDS = ("egg", "stage", "young", "button", "juvenile", "immature", "dried", "dry", "form")
_STAGE_OR_FORM = re.compile(r"\b(" + "|".join(STAGE_OR_FORM_WORDS) + r")\b", re.IGNORECASE)
_DEADLY_NOTE = re.compile(r"\bdeadly\b", re.IGNORECASE)


# --- what more photos should show ------------------------------------------------------------------
# A flagged photo, or one just short of the edible limit, is often a species the model cannot tell
# from one view: the answer asks for the views that separate the candidates, and several photos of
# one find are scored together (measured on the demo: per-find AUROC 0.88 against 0.80 per photo).
# The parts that tell these genera apart, from field guides' keys (e.g. Laessoe, "Mushrooms", 2013).
_VIEWS = (
    (("Amanita",), "the gills, the ring, and the base of the stem dug out of the ground (a sack or bulb there "
                   "marks an Amanita)"),
    (("Boletus", "Imleria", "Leccinum", "Suillus", "Xerocomellus", "Neoboletus", "Suillellus", "Rubroboletus",
      "Tylopilus"), "the pores under the cap (and whether they turn blue when pressed), the stem's surface, and "
                    "the flesh cut in half"),
    (("Lycoperdon", "Apioperdon", "Calvatia"), "the mushroom cut in half from top to bottom (a puffball is white "
                                               "throughout; a death cap's egg shows a cap and gills inside)"),
)
_DEFAULT_VIEWS = "the underside (gills or pores), the whole stem with its base dug out, and the flesh cut in half"


def views_of(species: Species) -> str:
    """What photos of a find should show to tell this species from its look-alikes."""
    genus = species.name.split()[0]
    return next((views for genera, views in _VIEWS if genus in genera), _DEFAULT_VIEWS)


# --- look-alikes ----------------------------------------------------------------------------------
def parse_look_alikes(entries: Iterable[str]) -> list[tuple[str, str]]:
    """Table entries -> [(scientific name, note)]. 'Amanita phalloides (egg stage)' ->
    ('Amanita phalloides', 'egg stage'); 'X (not in list; deadly)' -> ('X', 'deadly'). Entries whose
    parenthesis was split apart at a ';' by a CSV import ('X (not in list', 'deadly)') are joined
    back first, so the qualifier is never mistaken for a species."""
    merged: list[str] = []
    for raw in entries:
        text = str(raw).strip()
        if not text:
            continue
        if merged and merged[-1].count("(") > merged[-1].count(")"):
            merged[-1] = f"{merged[-1]}; {text}"
        else:
            merged.append(text)
    out: list[tuple[str, str]] = []
    for text in merged:
        name, _, rest = text.partition("(")
        qualifiers = [q.strip() for q in re.split(r"[;,]", rest.rstrip().rstrip(")"))]
        note = "; ".join(q for q in qualifiers if q and q.lower() != "not in list")
        name = " ".join(name.split())
        if name:
            out.append((name, note))
    return out


def look_alikes_of(species: Species, table: Sequence[Species]) -> list[tuple[str, str]]:
    """The species' own look-alikes, then the species of the table that list it as theirs
    (confusion goes both ways: the death cap lists none, but three species list the death cap)."""
    return list(_look_alikes_of(species, tuple(table)))


# Species are frozen, so the answer depends on the arguments alone: evaluation advises ~10,000
# photos against one table, and parsing every table entry each time was most of its 12 s.
@functools.lru_cache(maxsize=1024)
def _look_alikes_of(species: Species, table: tuple[Species, ...]) -> tuple[tuple[str, str], ...]:
    found = list(parse_look_alikes(species.look_alikes))
    seen = {name for name, _ in found} | {species.name}
    for other in table:
        if other.name not in seen and any(n == species.name for n, _ in parse_look_alikes(other.look_alikes)):
            found.append((other.name, ""))
            seen.add(other.name)
    return tuple((n, note) for n, note in found if n != species.name)


def resolve(name: str, note: str, of: Species, table: Mapping[str, Species],
             classes: Mapping[str, int]) -> dict:
    known = table.get(name)
    return {"name": name, "of_species": of.name,
            "edibility": known.edibility if known else UNKNOWN_EDIBILITY,
            "in_model": name in classes, "note": note}


def tables(species: Sequence[Species], all_species: Sequence[Species] | None):
    """(graded table as a list, by name, class index by name): what advise and look_alike_table
    resolve look-alikes against, built in one place so the page's table cannot drift from predict.py's."""
    table_list = list(all_species) if all_species is not None else list(species)
    table = {s.name: s for s in table_list}
    for s in species:  # a model's classes always count as known, even if the table lacks them
        table.setdefault(s.name, s)
    return table_list, table, {s.name: i for i, s in enumerate(species)}


def look_alike_table(species: Sequence[Species], all_species: Sequence[Species] | None = None) -> dict[str, list[dict]]:
    """For each of the model's classes, its look-alikes resolved exactly as `advise` resolves them
    ({name, of_species, edibility, in_model, note}), plus what the sentences about them need from
    the table (common_name, in_table) and whether it always blocks "edible" (blocks: always_blocks,
    so the page needs no copy of the stage-or-form words). The phone page (mushroom/app.py) ships this so that its
    mirror of `advise` needs no species-table logic of its own."""
    table_list, table, classes = tables(species, all_species)
    out = {}
    for s in species:
        rows = []
        for name, note in look_alikes_of(s, table_list):
            la = resolve(name, note, s, table, classes)
            known = table.get(name)
            rows.append({**la, "common_name": known.common_name if known else "", "in_table": known is not None,
                         "blocks": always_blocks(la)})
        out[s.name] = rows
    return out


def is_risky(look_alike: dict) -> bool:
    return look_alike["edibility"] in DANGEROUS_GRADES or look_alike["edibility"] == UNKNOWN_EDIBILITY


def always_blocks(look_alike: dict) -> bool:
    """A look-alike that rules out "edible" whatever the probabilities and whether or not the model
    knows it: graded deadly (or noted deadly), or poisonous/ungraded in a stage or form named by its
    note (egg stage, young, dried) that photos of the species' usual form do not teach."""
    note = look_alike["note"] or ""
    if look_alike["edibility"] == "deadly" or _DEADLY_NOTE.search(note):
        return True
    return is_risky(look_alike) and bool(_STAGE_OR_FORM.search(note))


def unseen_danger(look_alike: dict) -> bool:
    """A poisonous, deadly or ungraded look-alike the model was not trained on: it cannot be told
    apart from a photo, whatever the probabilities say."""
    return is_risky(look_alike) and not look_alike["in_model"]

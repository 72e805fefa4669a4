"""The forager's answer for one photo: top species, certainty, a safe verdict and its reasons.
Pure Python/NumPy (no TensorFlow), so predict.py starts fast on a phone-class CPU.

    answer = advise(calibrated_probs, class_species, cfg.predict, all_species(cfg))
    print(format_text(answer, "photo.jpg"))
    json.dumps(answer.to_json("photo.jpg"))

Verdict rules (safety first; thresholds from cfg.predict). Each rule that fires adds its id to
`rules` and says itself in plain words in `reasons`. The invariant (tests/test_advice.py states it
as a property over generated cases, and runs the page's decision.js on the same cases): "edible"
only when ALL of these hold:
- the format answering has a fitted unknown-species check (open_set.json) and a fitted temperature
  (temperature.json): without either, rule no_unknown_check / not_calibrated, never "edible" (a
  model that cannot say "I don't know this one" mistakes every other species for one it knows);
- the photo is not flagged (rule unknown_species: its unknown-species score reaches the threshold
  fitted on photos of species the model never learnt; verdict "unknown", checked first) and its
  score (every photo's, for a find) is below the stricter edible threshold (rule unknown_margin:
  measured on the demo, the photos of poisonous unknown species called edible all sat between
  the two thresholds);
- the calibrated top-1 probability >= edible_threshold and the top-1 species, graded by the
  CURRENT species table (looked up by name; meta.json gives class order only), is
  choice/edible/caution (rule low_certainty otherwise);
- no poisonous/deadly class holds more than danger_threshold (rule dangerous_probability; over
  every class, not only the top_k listed);
- the top-1 species has no poisonous, deadly or ungraded look-alike the model was not trained on
  (rule unknown_look_alike: a model cannot tell apart what it never saw);
- neither the top-1 species nor any class above danger_threshold has a deadly look-alike, or a
  poisonous one whose table note names a stage or form (egg stage, young, dried), whether or not
  the model knows it (rule deadly_look_alike): a photo cannot tell a puffball from the death cap's
  egg, and no photo of an adult death cap teaches the model that egg.
- "not_edible" (rule confident_not_edible) when the top-1 species is inedible/poisonous/deadly
  with probability >= not_edible_threshold.
- otherwise "uncertain", whose reasons always say not to eat it.
A caution species that passes carries its note in the reasons. Probabilities and unknown-species
scores must be finite (ValueError otherwise: an error for the photo, never a verdict).
Look-alikes listed: those of the top-1 species and of any other listed species above
danger_threshold, in both directions of the table (a species lists X, or X lists the species).
Every answer ends its reasons with REMINDER.

Certainty words: "high" when the top-1 probability >= edible_threshold (strong enough to call a
mushroom edible), "medium" when >= not_edible_threshold, else "low".

JSON (`Answer.to_json`, a stable contract read by other tools):
    {"image": str | null,
     "top5": [{"species", "common_name", "probability", "edibility"}, ...],  # top_k entries, best
                                                    # first; the key stays "top5" whatever top_k is
     "certainty": {"probability": float, "level": "high" | "medium" | "low"},
     "verdict": "edible" | "not_edible" | "uncertain" | "unknown",
     "reasons": [str, ...],                          # full sentences; the last one is REMINDER
     "rules": [str, ...],                            # ids of the rules that decided (RULES)
     "look_alikes": [{"name", "of_species", "edibility", "in_model", "note"}, ...],
     "unknown_score": float | null,                  # higher = less like any species the model knows
     "unknown_threshold": float | null,              # flagged at or above it; null: no threshold fitted
     "unknown_edible_threshold": float | null,       # "edible" needs a score below it (stricter)
     "unknown_flagged": bool,
     "known_species": int}                           # how many species the model can name
look_alikes.edibility is the table's grade, or "unknown (not in the model)" for a look-alike
outside the species table; in_model says whether the model can recognise it at all; note is the
table's qualifier (e.g. "egg stage", "deadly") or "".
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mushroom.species import DANGEROUS_GRADES, Species

REMINDER = ("A photo is never enough to eat a wild mushroom: have every find identified in person "
            "by an experienced mycologist or a mushroom inspector before eating any of it.")
UNKNOWN_EDIBILITY = "unknown (not in the model)"
VERDICTS = ("edible", "not_edible", "uncertain", "unknown")
RULES = ("unknown_species", "confident_edible", "unknown_look_alike", "deadly_look_alike", "unknown_margin",
         "dangerous_probability", "no_unknown_check", "not_calibrated", "confident_not_edible", "low_certainty")
# A look-alike note naming one of these words describes a stage or form of the look-alike that no
# photo of its usual form teaches the model (species.csv: "Amanita phalloides (egg stage)"): a
# poisonous look-alike in such a form blocks "edible" like a deadly one.
STAGE_OR_FORM_WORDS = ("egg", "stage", "young", "button", "juvenile", "immature", "dried", "dry", "form")
_STAGE_OR_FORM = re.compile(r"\b(" + "|".join(STAGE_OR_FORM_WORDS) + r")\b", re.IGNORECASE)
_DEADLY_NOTE = re.compile(r"\bdeadly\b", re.IGNORECASE)
JSON_KEYS = ("image", "top5", "certainty", "verdict", "reasons", "rules", "look_alikes", "unknown_score",
             "unknown_threshold", "unknown_edible_threshold", "unknown_flagged", "known_species")

GRADE_MEANING = {
    "choice": "edible and worth eating",
    "edible": "edible",
    "caution": "edible only with preparation, for example well cooked",
    "inedible": "not worth eating",
    "poisonous": "eating it causes poisoning",
    "deadly": "eating it can kill",
}

# A probability vector is renormalised only when it is off by more than this (an int8 softmax
# sums to 1 +- a few 1/256 steps); a vector that already sums to 1 keeps its exact values so that
# a probability exactly at a threshold stays at it.
_SUM_TOLERANCE = 1e-6


@dataclass
class Answer:
    top: list[dict]              # species, common_name, probability, edibility, notes; best first
    certainty: float             # calibrated top-1 probability
    certainty_level: str         # high | medium | low
    verdict: str                 # one of VERDICTS
    reasons: list[str]           # full sentences, REMINDER last
    look_alikes: list[dict] = field(default_factory=list)  # name, of_species, edibility, in_model, note
    image: str | None = None
    rules: list[str] = field(default_factory=list)         # ids from RULES, in the order they fired
    unknown: "UnknownCheck | None" = None
    known_species: int = 0

    def to_json(self, image: str | None = None) -> dict:
        """The documented JSON object (module docstring): exactly the keys JSON_KEYS."""
        return {
            "image": image if image is not None else self.image,
            "top5": [{"species": t["species"], "common_name": t["common_name"],
                      "probability": float(t["probability"]), "edibility": t["edibility"]}
                     for t in self.top],
            "certainty": {"probability": float(self.certainty), "level": self.certainty_level},
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "rules": list(self.rules),
            "look_alikes": [dict(la) for la in self.look_alikes],
            "unknown_score": None if self.unknown is None else float(self.unknown.score),
            "unknown_threshold": None if self.unknown is None else float(self.unknown.threshold),
            "unknown_edible_threshold": None if self.unknown is None or self.unknown.edible_threshold is None
            else float(self.unknown.edible_threshold),
            "unknown_flagged": bool(self.unknown is not None and self.unknown.flagged),
            "known_species": int(self.known_species),
        }


@dataclass(frozen=True)
class UnknownCheck:
    """A photo's unknown-species score and the thresholds it is held against (one format's record
    in open_set.json). Every number must be finite: a NaN score would pass `score >= threshold`
    as "not flagged", so it is refused here (ValueError), never answered."""
    score: float
    threshold: float
    name: str = "msp"                 # which score (openset.SCORES)
    recall: float | None = None       # share of unknown-val photos the threshold flags
    edible_threshold: float | None = None   # "edible" only below it; None: no stricter threshold fitted,
                                            # so never "edible" (an open_set.json of an older evaluate.py)
    edible_recall: float | None = None      # share of unknown-val photos at or above edible_threshold
    # A find of several photos: its highest single-photo score, held against edible_threshold (the
    # mean `score` decides the flag, as measured). Every photo must look familiar before "edible":
    # one flagged photo averaged with a confident one of another mushroom must not pass.
    worst_photo_score: float | None = None

    def __post_init__(self):
        for key in ("score", "threshold", "edible_threshold", "worst_photo_score"):
            value = getattr(self, key)
            if value is None and key in ("edible_threshold", "worst_photo_score"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                    or not np.isfinite(value):
                raise ValueError(f"the unknown-species {key.replace('_', ' ')} is {value!r}, not a finite number: "
                                 "the model's outputs for this photo (or its fitted check) are broken")

    @classmethod
    def from_record(cls, score: float, record: Mapping, worst_photo_score: float | None = None) -> "UnknownCheck":
        """The check for one score (a find: the mean of its photos' scores, and their maximum)
        against a format's record in open_set.json."""
        return cls(float(score), float(record["threshold"]), record["score"], record.get("unknown_recall"),
                   None if record.get("edible_threshold") is None else float(record["edible_threshold"]),
                   record.get("edible_recall"), None if worst_photo_score is None else float(worst_photo_score))

    @property
    def edible_score(self) -> float:
        """The score held against edible_threshold."""
        return self.score if self.worst_photo_score is None else max(self.score, self.worst_photo_score)

    @property
    def flagged(self) -> bool:
        return bool(self.score >= self.threshold)

    @property
    def too_close_for_edible(self) -> bool:
        """At or above the stricter edible threshold, or no such threshold fitted."""
        return self.edible_threshold is None or bool(self.edible_score >= self.edible_threshold)


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


def _more_photos_sentence(candidates: Sequence[Species]) -> str:
    views = list(dict.fromkeys(views_of(s) for s in candidates))
    return ("Take more photos of this same mushroom and answer them together as one find (predict.py "
            "--one-mushroom, or more photos on the page): show " + "; and ".join(views) + ".")


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


def _resolve(name: str, note: str, of: Species, table: Mapping[str, Species],
             classes: Mapping[str, int]) -> dict:
    known = table.get(name)
    return {"name": name, "of_species": of.name,
            "edibility": known.edibility if known else UNKNOWN_EDIBILITY,
            "in_model": name in classes, "note": note}


def _tables(species: Sequence[Species], all_species: Sequence[Species] | None):
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
    table_list, table, classes = _tables(species, all_species)
    out = {}
    for s in species:
        rows = []
        for name, note in look_alikes_of(s, table_list):
            la = _resolve(name, note, s, table, classes)
            known = table.get(name)
            rows.append({**la, "common_name": known.common_name if known else "", "in_table": known is not None,
                         "blocks": always_blocks(la)})
        out[s.name] = rows
    return out


def _is_risky(look_alike: dict) -> bool:
    return look_alike["edibility"] in DANGEROUS_GRADES or look_alike["edibility"] == UNKNOWN_EDIBILITY


def always_blocks(look_alike: dict) -> bool:
    """A look-alike that rules out "edible" whatever the probabilities and whether or not the model
    knows it: graded deadly (or noted deadly), or poisonous/ungraded in a stage or form named by its
    note (egg stage, young, dried) that photos of the species' usual form do not teach."""
    note = look_alike["note"] or ""
    if look_alike["edibility"] == "deadly" or _DEADLY_NOTE.search(note):
        return True
    return _is_risky(look_alike) and bool(_STAGE_OR_FORM.search(note))


def _unseen_danger(look_alike: dict) -> bool:
    """A poisonous, deadly or ungraded look-alike the model was not trained on: it cannot be told
    apart from a photo, whatever the probabilities say."""
    return _is_risky(look_alike) and not look_alike["in_model"]


# --- wording --------------------------------------------------------------------------------------
def _threshold(t: float) -> str:
    return f"{100 * t:g}%"


def _pct(p: float, near: float | None = None) -> str:
    """'95.0%'; with more decimals when one decimal would print a probability just off a
    threshold as the threshold itself ('89.99%' rather than '90.0%, below 90%')."""
    for decimals in range(1, 7):
        text = f"{100 * p:.{decimals}f}"
        if near is None or p == near or text != f"{100 * near:.{decimals}f}":
            break
    return text + "%"


def _label(s: Species) -> str:
    return f"{s.name} ({s.common_name})" if s.common_name else s.name


def _grade_sentence(s: Species) -> str:
    if s.edibility == "caution":
        return f"{s.name} is graded caution: {s.notes or GRADE_MEANING['caution']}."
    return f"{s.name} is graded {s.edibility}: {GRADE_MEANING[s.edibility]}."


def _note_sentence(s: Species) -> list[str]:
    if s.notes and s.edibility != "caution":  # a caution note is already in the grade sentence
        return [f"The species table adds for {s.name}: {s.notes}."]
    return []


def _look_alike_sentence(la: dict, of: Species, table: Mapping[str, Species],
                         probs_by_name: Mapping[str, float]) -> str:
    name = la["name"] + (f" ({la['note']})" if la["note"] else "")
    known = table.get(la["name"])
    if known is None:
        return (f"{of.name} has a look-alike, {name}, that is not in the species table, so the "
                f"model cannot rule it out; check for it in person before eating.")
    desc = f"{name}, {known.common_name}, graded {known.edibility}"
    if not la["in_model"]:
        return (f"{of.name} has a dangerous look-alike, {desc}, that this model was not trained "
                f"on, so it cannot rule it out; check for it in person before eating.")
    return (f"{of.name} has a dangerous look-alike, {desc}, to which the model gives "
            f"{_pct(probs_by_name[la['name']])}; rule it out in person before eating.")


# --- the verdict ----------------------------------------------------------------------------------
def _check_probs(probs: Any, n_classes: int) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2 and p.shape[0] == 1:
        p = p[0]
    if p.ndim != 1 or p.shape[0] != n_classes:
        raise ValueError(f"expected {n_classes} class probabilities (one per species), got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError("probabilities must be finite, non-negative and not all zero")
    total = p.sum()
    return p / total if abs(total - 1.0) > _SUM_TOLERANCE else p


def certainty_level(p: float, predict_cfg: Mapping) -> str:
    if p >= predict_cfg["edible_threshold"]:
        return "high"
    if p >= predict_cfg["not_edible_threshold"]:
        return "medium"
    return "low"


def advise(probs: Any, species: Sequence[Species], predict_cfg: Mapping,
           all_species: Sequence[Species] | None = None, image: str | None = None,
           unknown: UnknownCheck | None = None, temperature: float | None = None) -> Answer:
    """The answer for one photo (or one fused find). `probs` (C,): calibrated class probabilities
    in the order of `species` (the model's classes, graded by the current table:
    species.classes_from_table); `predict_cfg`: cfg.predict (top_k, edible_threshold,
    danger_threshold, not_edible_threshold); `all_species`: every graded species
    (species.graded_species), so that look-alikes outside the model's classes still get their
    grade (defaults to `species`); `unknown`: the photo's unknown-species check (None: no threshold
    fitted for this format); `temperature`: the temperature `probs` were calibrated with (None: not
    fitted for this format). Without a check or a temperature the answer is never "edible"."""
    p = _check_probs(probs, len(species))
    if temperature is not None and not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"the temperature is {temperature!r}, not a positive finite number: rerun evaluate.py")
    top_k = int(predict_cfg["top_k"])
    edible_t = float(predict_cfg["edible_threshold"])
    danger_t = float(predict_cfg["danger_threshold"])
    not_edible_t = float(predict_cfg["not_edible_threshold"])
    table_list, table, classes = _tables(species, all_species)
    probs_by_name = {s.name: float(p[i]) for i, s in enumerate(species)}

    # Stable sort: equal probabilities keep class order, the same tie rule as np.argmax.
    order = np.argsort(-p, kind="stable")
    top = [{"species": species[i].name, "common_name": species[i].common_name,
            "probability": float(p[i]), "edibility": species[i].edibility,
            "notes": species[i].notes} for i in order[:top_k]]
    best, p1 = species[order[0]], float(p[order[0]])

    # Look-alikes of the top-1 species and of every listed species holding meaningful probability
    # (> danger_threshold): those of a 0.1% species would bury the ones that matter.
    look_alikes = []
    for rank, i in enumerate(order[:top_k]):
        if rank > 0 and p[i] <= danger_t:
            continue
        for name, note in look_alikes_of(species[i], table_list):
            look_alikes.append(_resolve(name, note, species[i], table, classes))
    best_risky = [la for la in look_alikes if la["of_species"] == best.name and _is_risky(la)]

    blockers = [(species[i], float(p[i])) for i in order[1:]
                if species[i].is_dangerous and p[i] > danger_t]

    unseen = [la for la in look_alikes if la["of_species"] == best.name and _unseen_danger(la)]
    # Over every class above danger_threshold, not only the top_k listed (as the danger check);
    # those already named by unknown_look_alike are not named twice.
    deadly = [_resolve(name, note, species[i], table, classes)
              for rank, i in enumerate(order) if rank == 0 or p[i] > danger_t
              for name, note in look_alikes_of(species[i], table_list)]
    deadly = [la for la in deadly if always_blocks(la) and la not in unseen]
    margin = unknown is not None and unknown.too_close_for_edible
    unfitted = unknown is None or temperature is None
    reasons: list[str] = []
    rules: list[str] = []
    if unknown is not None and unknown.flagged:
        verdict = "unknown"
        rules.append("unknown_species")
        share = f", which flags {_threshold(unknown.recall)} of photos of species it never learnt" if unknown.recall else ""
        reasons.append(f"This photo does not look like any of the {len(species)} species this model knows: its "
                       f"unknown-species score is {unknown.score:.3g}, at or above the threshold "
                       f"{unknown.threshold:.3g}{share}. It may be a species the model cannot name; the "
                       f"list shows only what it resembles most.")
        reasons.append("Do not eat this mushroom: the model does not know it.")
    elif best.is_edible and p1 >= edible_t and not (blockers or unseen or deadly or margin or unfitted):
        verdict = "edible"
        rules.append("confident_edible")
        reasons.append(f"The most likely species is {_label(best)} with a calibrated probability of "
                       f"{_pct(p1, edible_t)}, at or above the {_threshold(edible_t)} needed before "
                       f"a mushroom may be called edible.")
        reasons.append(_grade_sentence(best))
        reasons.extend(_note_sentence(best))
        reasons.append(f"No poisonous or deadly species holds more than {_threshold(danger_t)} "
                       f"probability.")
        reasons.extend(_look_alike_sentence(la, best, table, probs_by_name) for la in best_risky)
    elif not best.is_edible and p1 >= not_edible_t:
        verdict = "not_edible"
        rules.append("confident_not_edible")
        reasons.append(f"The most likely species is {_label(best)} with a calibrated probability of "
                       f"{_pct(p1, not_edible_t)}, at or above the {_threshold(not_edible_t)} needed "
                       f"to say with confidence that it is not edible.")
        reasons.append(_grade_sentence(best))
        reasons.extend(_note_sentence(best))
        reasons.append(f"Do not eat this mushroom: the model recognises a species that is "
                       f"{best.edibility}.")
    else:
        verdict = "uncertain"
        head = f"The most likely species, {_label(best)}, graded {best.edibility}, has a calibrated probability of"
        if best.is_edible and p1 < edible_t:
            rules.append("low_certainty")
            reasons.append(f"{head} only {_pct(p1, edible_t)}, below the {_threshold(edible_t)} needed before a "
                           f"mushroom may be called edible.")
        elif best.is_edible and blockers:
            reasons.append(f"{head} {_pct(p1, edible_t)}, but a poisonous or deadly species holds too much "
                           f"probability to rule it out.")
        elif best.is_edible and unseen:
            reasons.append(f"{head} {_pct(p1, edible_t)}, but it has a dangerous look-alike that this model was "
                           f"never trained on.")
        elif best.is_edible and deadly:
            reasons.append(f"{head} {_pct(p1, edible_t)}, but a look-alike that a photo cannot rule out is deadly, "
                           f"or poisonous in a form photos do not show.")
        elif best.is_edible and unfitted:
            reasons.append(f"{head} {_pct(p1, edible_t)}, but this model file was never checked against photos of "
                           f"species it does not know, so it never calls a mushroom edible.")
        elif best.is_edible:
            reasons.append(f"{head} {_pct(p1, edible_t)}, but the photo is not typical enough of the species this "
                           f"model knows to call it edible.")
        else:
            rules.append("low_certainty")
            reasons.append(f"{head} only {_pct(p1, not_edible_t)}, below the {_threshold(not_edible_t)} needed to "
                           f"name it with confidence.")
        if blockers:
            rules.append("dangerous_probability")
        for s, q in blockers:
            reasons.append(f"{_label(s)}, graded {s.edibility}, holds {_pct(q, danger_t)} "
                           f"probability, above the {_threshold(danger_t)} that rules out calling "
                           f"this mushroom edible.")
        if best.is_edible and unseen:
            rules.append("unknown_look_alike")
            for la in unseen:
                known = table.get(la["name"])
                what = (f"graded {known.edibility}" if known else "not in the species table") + (
                    f" ({la['note']})" if la["note"] else "")
                reasons.append(f"{best.name} has a look-alike, {la['name']}, {what}, that this model was "
                               f"never trained on: it cannot tell the two apart from a photo, so it never "
                               f"calls {best.name} edible.")
        if best.is_edible and deadly:
            rules.append("deadly_look_alike")
            for la in deadly:
                known = table.get(la["name"])
                what = (f"graded {known.edibility}" if known else "not in the species table") + (
                    f" ({la['note']})" if la["note"] else "")
                reasons.append(f"{la['of_species']} has a look-alike, {la['name']}, {what}, that a photo cannot "
                               f"tell apart from it: a deadly look-alike, or a poisonous one in a stage or form "
                               f"such as an egg, always rules out calling this mushroom edible.")
        if best.is_edible and p1 >= edible_t and margin:
            rules.append("unknown_margin")
            if unknown.edible_threshold is None:
                reasons.append("Its unknown-species check has no stricter limit for 'edible' (it was fitted by an "
                               "older evaluate.py): rerun evaluate.py on the model folder.")
            else:
                share = (f"; {_threshold(unknown.edible_recall)} of photos of species it never learnt score at or "
                         f"above it") if unknown.edible_recall else ""
                what = ("Its unknown-species score is" if unknown.edible_score == unknown.score
                        else "One of its photos has an unknown-species score of")
                reasons.append(f"{what} {unknown.edible_score:.3g}: not flagged as unknown, but at "
                               f"or above {unknown.edible_threshold:.3g}, the stricter limit a photo must stay "
                               f"below to be called edible{share}.")
        reasons.append("Do not eat this mushroom: the model is not certain enough to call it edible.")
    if unknown is not None and unknown.worst_photo_score is None and (
            verdict == "unknown" or "unknown_margin" in rules):
        # one photo, flagged or just short of the edible limit: more views of the same find help most
        reasons.append(_more_photos_sentence([species[i] for i in order[:2]]))
    if unknown is None:
        rules.append("no_unknown_check")
        reasons.append("No unknown-species check is fitted for this model file: it cannot tell when a photo "
                       "shows a species it does not know, so it never calls a mushroom edible. Run evaluate.py "
                       "on the model folder to fit one.")
    if temperature is None:
        rules.append("not_calibrated")
        reasons.append("No temperature is fitted for this model file, so its probabilities are not calibrated "
                       "and it never calls a mushroom edible. Run evaluate.py on the model folder to fit one.")
    reasons.append(REMINDER)

    return Answer(top=top, certainty=p1, certainty_level=certainty_level(p1, predict_cfg),
                  verdict=verdict, reasons=reasons, look_alikes=look_alikes, image=image, rules=rules,
                  unknown=unknown, known_species=len(species))


# --- human-readable text --------------------------------------------------------------------------
def _edibility_text(grade: str, notes: str) -> str:
    if grade == "caution" and notes:
        return f"caution: {notes}"
    if grade == "choice":
        return "choice (edible and worth eating)"
    return grade


_VERDICT_TEXT = {"edible": "EDIBLE", "not_edible": "NOT EDIBLE", "uncertain": "UNCERTAIN - DO NOT EAT",
                 "unknown": "UNKNOWN SPECIES - DO NOT EAT"}


def format_text(answer: Answer, image_name: str | None = None) -> str:
    """The multi-line answer a person reads: the top species table, certainty, VERDICT, reasons,
    look-alikes and the reminder."""
    image = image_name if image_name is not None else (answer.image or "photo")
    rows = [("#", "Species", "Common name", "Probability", "Edibility")]
    for rank, t in enumerate(answer.top, 1):
        rows.append((str(rank), t["species"], t["common_name"], _pct(t["probability"]),
                     _edibility_text(t["edibility"], t.get("notes", ""))))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = [f"{image}"]
    for r in rows:
        lines.append("  " + "  ".join([r[0].rjust(widths[0]), r[1].ljust(widths[1]),
                                       r[2].ljust(widths[2]), r[3].rjust(widths[3]), r[4]]).rstrip())
    lines.append(f"Certainty: {_pct(answer.certainty)} ({answer.certainty_level})")
    if answer.unknown is not None:
        u = answer.unknown
        edible = "" if u.edible_threshold is None else f", 'edible' only below {u.edible_threshold:.3g}"
        lines.append(f"Unknown-species check: score {u.score:.3g}, threshold {u.threshold:.3g}{edible}: "
                     + ("FLAGGED, not like any species the model knows" if u.flagged
                        else "passed, too close for 'edible'" if u.too_close_for_edible else "passed"))
    else:
        lines.append("Unknown-species check: none fitted for this model file (run evaluate.py): never 'edible'")
    lines.append(f"Verdict: {_VERDICT_TEXT[answer.verdict]}")
    lines.append("Reasons:")
    lines.extend(f"  - {r}" for r in answer.reasons if r != REMINDER)
    if answer.look_alikes:
        lines.append("Look-alikes:")
        for la in answer.look_alikes:
            note = f" ({la['note']})" if la["note"] else ""
            lines.append(f"  - {la['name']}{note}, look-alike of {la['of_species']}: {la['edibility']}")
    lines.append(REMINDER)
    return "\n".join(lines) + "\n"


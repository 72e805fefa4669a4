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
Every answer ends its reasons with REMINDER. The sentences are answer_text.TEMPLATES, filled here
and, from the same table in model.json, by the page.

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

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from mushroom.answer_text import GRADE_MEANING, REMINDER, VERDICT_TEXT, say
from mushroom.look_alikes import always_blocks, is_risky, look_alikes_of, resolve, tables, unseen_danger, views_of
from mushroom.species import Species

VERDICTS = ("edible", "not_edible", "uncertain", "unknown")
RULES = ("unknown_species", "confident_edible", "unknown_look_alike", "deadly_look_alike", "unknown_margin",
         "dangerous_probability", "no_unknown_check", "not_calibrated", "confident_not_edible", "low_certainty")
JSON_KEYS = ("image", "top5", "certainty", "verdict", "reasons", "rules", "look_alikes", "unknown_score",
             "unknown_threshold", "unknown_edible_threshold", "unknown_flagged", "known_species")


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
def _more_photos_sentence(candidates: Sequence[Species]) -> str:
    views = list(dict.fromkeys(views_of(s) for s in candidates))
    return say("more_photos", views=say("views_separator").join(views))
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
    return say("label", name=s.name, common_name=s.common_name) if s.common_name else s.name


def _noted(text: str, note: str) -> str:
    return say("with_note", text=text, note=note) if note else text


def _grade_sentence(s: Species) -> str:
    if s.edibility == "caution":
        return say("grade_caution", name=s.name, notes=s.notes or GRADE_MEANING["caution"])
    return say("grade", name=s.name, grade=s.edibility, meaning=GRADE_MEANING[s.edibility])


def _note_sentence(s: Species) -> list[str]:
    if s.notes and s.edibility != "caution":  # a caution note is already in the grade sentence
        return [say("table_note", name=s.name, notes=s.notes)]
    return []


def _look_alike_sentence(la: dict, of: Species, table: Mapping[str, Species],
                         probs_by_name: Mapping[str, float]) -> str:
    name = _noted(la["name"], la["note"])
    known = table.get(la["name"])
    if known is None:
        return say("look_alike_untabled", of=of.name, name=name)
    desc = say("look_alike_desc", name=name, common_name=known.common_name, grade=known.edibility)
    if not la["in_model"]:
        return say("look_alike_unseen", of=of.name, desc=desc)
    return say("look_alike_weighed", of=of.name, desc=desc, p=_pct(probs_by_name[la["name"]]))


def _what(la: dict, table: Mapping[str, Species]) -> str:
    """'graded poisonous (egg stage)', or 'not in the species table (deadly)'."""
    known = table.get(la["name"])
    return _noted(say("graded_as", grade=known.edibility) if known else say("not_in_table"), la["note"])


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
    table_list, table, classes = tables(species, all_species)
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
            look_alikes.append(resolve(name, note, species[i], table, classes))
    best_risky = [la for la in look_alikes if la["of_species"] == best.name and is_risky(la)]

    blockers = [(species[i], float(p[i])) for i in order[1:]
                if species[i].is_dangerous and p[i] > danger_t]

    unseen = [la for la in look_alikes if la["of_species"] == best.name and unseen_danger(la)]
    # Over every class above danger_threshold, not only the top_k listed (as the danger check);
    # those already named by unknown_look_alike are not named twice.
    deadly = [resolve(name, note, species[i], table, classes)
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
        share = say("flagged_share", recall=_threshold(unknown.recall)) if unknown.recall else ""
        reasons.append(say("flagged", n=str(len(species)), score=f"{unknown.score:.3g}",
                           threshold=f"{unknown.threshold:.3g}", share=share))
        reasons.append(say("dont_eat_unknown"))
    elif best.is_edible and p1 >= edible_t and not (blockers or unseen or deadly or margin or unfitted):
        verdict = "edible"
        rules.append("confident_edible")
        reasons.append(say("edible", label=_label(best), p=_pct(p1, edible_t), t=_threshold(edible_t)))
        reasons.append(_grade_sentence(best))
        reasons.extend(_note_sentence(best))
        reasons.append(say("no_danger", t=_threshold(danger_t)))
        reasons.extend(_look_alike_sentence(la, best, table, probs_by_name) for la in best_risky)
    elif not best.is_edible and p1 >= not_edible_t:
        verdict = "not_edible"
        rules.append("confident_not_edible")
        reasons.append(say("not_edible", label=_label(best), p=_pct(p1, not_edible_t), t=_threshold(not_edible_t)))
        reasons.append(_grade_sentence(best))
        reasons.extend(_note_sentence(best))
        reasons.append(say("dont_eat_known", grade=best.edibility))
    else:
        verdict = "uncertain"
        head = say("head", label=_label(best), grade=best.edibility)
        if best.is_edible and p1 < edible_t:
            rules.append("low_certainty")
            reasons.append(say("low_edible", head=head, p=_pct(p1, edible_t), t=_threshold(edible_t)))
        elif best.is_edible:
            why = ("blocked_danger" if blockers else "blocked_unseen" if unseen else "blocked_deadly" if deadly
                   else "blocked_unfitted" if unfitted else "blocked_margin")
            reasons.append(say(why, head=head, p=_pct(p1, edible_t)))
        else:
            rules.append("low_certainty")
            reasons.append(say("low_not_edible", head=head, p=_pct(p1, not_edible_t), t=_threshold(not_edible_t)))
        if blockers:
            rules.append("dangerous_probability")
        for s, q in blockers:
            reasons.append(say("danger_holds", label=_label(s), grade=s.edibility, q=_pct(q, danger_t),
                               t=_threshold(danger_t)))
        if best.is_edible and unseen:
            rules.append("unknown_look_alike")
            for la in unseen:
                reasons.append(say("unseen_rule", best=best.name, name=la["name"], what=_what(la, table)))
        if best.is_edible and deadly:
            rules.append("deadly_look_alike")
            for la in deadly:
                reasons.append(say("deadly_rule", of=la["of_species"], name=la["name"], what=_what(la, table)))
        if best.is_edible and p1 >= edible_t and margin:
            rules.append("unknown_margin")
            if unknown.edible_threshold is None:
                reasons.append(say("margin_no_limit"))
            else:
                share = say("margin_share", recall=_threshold(unknown.edible_recall)) if unknown.edible_recall else ""
                what = say("margin_photo" if unknown.edible_score == unknown.score else "margin_find")
                reasons.append(say("margin", what=what, score=f"{unknown.edible_score:.3g}",
                                   limit=f"{unknown.edible_threshold:.3g}", share=share))
        reasons.append(say("dont_eat_uncertain"))
    if unknown is not None and unknown.worst_photo_score is None and (
            verdict == "unknown" or "unknown_margin" in rules):
        # one photo, flagged or just short of the edible limit: more views of the same find help most
        reasons.append(_more_photos_sentence([species[i] for i in order[:2]]))
    if unknown is None:
        rules.append("no_unknown_check")
        reasons.append(say("no_unknown_check"))
    if temperature is None:
        rules.append("not_calibrated")
        reasons.append(say("not_calibrated"))
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


_VERDICT_TEXT = VERDICT_TEXT


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

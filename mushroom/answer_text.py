"""Every word of the forager's answer, in one table: advice.advise decides and fills these templates,
and the phone page receives the same table in model.json (app.rules_bundle), so decision.js renders
the same sentences without holding any of them. A template is plain text with {named} fields; the
fields are filled with text already formatted (numbers as advice's _pct / _threshold / .3g print
them, and the page's twins of those), so `say` is all either side needs.
"""
from __future__ import annotations

REMINDER = ("A photo is never enough to eat a wild mushroom: have every find identified in person "
            "by an experienced mycologist or a mushroom inspector before eating any of it.")
UNKNOWN_EDIBILITY = "unknown (not in the model)"

GRADE_MEANING = {
    "choice": "edible and worth eating",
    "edible": "edible",
    "caution": "edible only with preparation, for example well cooked",
    "inedible": "not worth eating",
    "poisonous": "eating it causes poisoning",
    "deadly": "eating it can kill",
}

VERDICT_TEXT = {"edible": "EDIBLE", "not_edible": "NOT EDIBLE", "uncertain": "UNCERTAIN - DO NOT EAT",
                "unknown": "UNKNOWN SPECIES - DO NOT EAT"}

TEMPLATES = {
    # species and look-alikes
    "label": "{name} ({common_name})",
    "grade": "{name} is graded {grade}: {meaning}.",
    "grade_caution": "{name} is graded caution: {notes}.",
    "table_note": "The species table adds for {name}: {notes}.",
    "graded_as": "graded {grade}",
    "not_in_table": "not in the species table",
    "with_note": "{text} ({note})",
    "look_alike_desc": "{name}, {common_name}, graded {grade}",
    "look_alike_untabled": ("{of} has a look-alike, {name}, that is not in the species table, so the model cannot "
                            "rule it out; check for it in person before eating."),
    "look_alike_unseen": ("{of} has a dangerous look-alike, {desc}, that this model was not trained on, so it "
                          "cannot rule it out; check for it in person before eating."),
    "look_alike_weighed": ("{of} has a dangerous look-alike, {desc}, to which the model gives {p}; rule it out in "
                           "person before eating."),
    # unknown species
    "flagged": ("This photo does not look like any of the {n} species this model knows: its unknown-species score "
                "is {score}, at or above the threshold {threshold}{share}. It may be a species the model cannot "
                "name; the list shows only what it resembles most."),
    "flagged_share": ", which flags {recall} of photos of species it never learnt",
    "dont_eat_unknown": "Do not eat this mushroom: the model does not know it.",
    # edible
    "edible": ("The most likely species is {label} with a calibrated probability of {p}, at or above the {t} needed "
               "before a mushroom may be called edible."),
    "no_danger": "No poisonous or deadly species holds more than {t} probability.",
    # not edible
    "not_edible": ("The most likely species is {label} with a calibrated probability of {p}, at or above the {t} "
                   "needed to say with confidence that it is not edible."),
    "dont_eat_known": "Do not eat this mushroom: the model recognises a species that is {grade}.",
    # uncertain: the first sentence says what kept the answer from "edible"
    "head": "The most likely species, {label}, graded {grade}, has a calibrated probability of",
    "low_edible": "{head} only {p}, below the {t} needed before a mushroom may be called edible.",
    "low_not_edible": "{head} only {p}, below the {t} needed to name it with confidence.",
    "blocked_danger": "{head} {p}, but a poisonous or deadly species holds too much probability to rule it out.",
    "blocked_unseen": "{head} {p}, but it has a dangerous look-alike that this model was never trained on.",
    "blocked_deadly": ("{head} {p}, but a look-alike that a photo cannot rule out is deadly, or poisonous in a form "
                       "photos do not show."),
    "blocked_unfitted": ("{head} {p}, but this model file was never checked against photos of species it does not "
                         "know, so it never calls a mushroom edible."),
    "blocked_margin": "{head} {p}, but the photo is not typical enough of the species this model knows to call it edible.",
    "danger_holds": ("{label}, graded {grade}, holds {q} probability, above the {t} that rules out calling this "
                     "mushroom edible."),
    "unseen_rule": ("{best} has a look-alike, {name}, {what}, that this model was never trained on: it cannot tell "
                    "the two apart from a photo, so it never calls {best} edible."),
    "deadly_rule": ("{of} has a look-alike, {name}, {what}, that a photo cannot tell apart from it: a deadly "
                    "look-alike, or a poisonous one in a stage or form such as an egg, always rules out calling this "
                    "mushroom edible."),
    "margin_no_limit": ("Its unknown-species check has no stricter limit for 'edible' (it was fitted by an older "
                        "evaluate.py): rerun evaluate.py on the model folder."),
    "margin_photo": "Its unknown-species score is",
    "margin_find": "One of its photos has an unknown-species score of",
    "margin": ("{what} {score}: not flagged as unknown, but at or above {limit}, the stricter limit a photo must stay "
               "below to be called edible{share}."),
    "margin_share": "; {recall} of photos of species it never learnt score at or above it",
    "dont_eat_uncertain": "Do not eat this mushroom: the model is not certain enough to call it edible.",
    # what to do next, and what the folder lacks
    "more_photos": ("Take more photos of this same mushroom and answer them together as one find (predict.py "
                    "--one-mushroom, or more photos on the page): show {views}."),
    "views_separator": "; and ",
    "no_unknown_check": ("No unknown-species check is fitted for this model file: it cannot tell when a photo shows a "
                         "species it does not know, so it never calls a mushroom edible. Run evaluate.py on the model "
                         "folder to fit one."),
    "not_calibrated": ("No temperature is fitted for this model file, so its probabilities are not calibrated and it "
                       "never calls a mushroom edible. Run evaluate.py on the model folder to fit one."),
}


def say(key: str, **fields: str) -> str:
    """The template `key` with its fields filled (decision.js's `say` does the same)."""
    return TEMPLATES[key].format(**fields)


def bundle_text() -> dict:
    """What model.json carries of this module, for the page."""
    return {"reminder": REMINDER, "unknown_edibility": UNKNOWN_EDIBILITY, "templates": dict(TEMPLATES),
            "verdicts": dict(VERDICT_TEXT), "grade_meaning": dict(GRADE_MEANING)}

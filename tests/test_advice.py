import json
import subprocess
import sys

import numpy as np
import pytest

from mushroom.advice import JSON_KEYS, RULES, VERDICTS, UnknownCheck, advise, format_text
from mushroom.answer_text import REMINDER, UNKNOWN_EDIBILITY
from mushroom.config import load_config
from mushroom.look_alikes import parse_look_alikes
from mushroom.species import all_species, by_name, graded_species, selected_species


@pytest.fixture
def table(cfg):
    return all_species(cfg)


@pytest.fixture
def classes(cfg):
    return selected_species(cfg)  # config.yaml: all 51 species


def vec(classes, named: dict[str, float]) -> np.ndarray:
    """Class probabilities with the named species at the given values and the rest of the mass
    spread evenly over every other class."""
    names = [s.name for s in classes]
    p = np.zeros(len(classes))
    others = [i for i, n in enumerate(names) if n not in named]
    p[others] = (1.0 - sum(named.values())) / len(others)
    for n, v in named.items():
        p[names.index(n)] = v
    return p


# A fitted check that this photo passes well inside both limits, and a fitted temperature: what an
# evaluated model folder gives. Tests of the other rules start from it.
PASS = UnknownCheck(0.10, 0.50, "energy", 0.95, edible_threshold=0.30, edible_recall=0.99)
T = 1.0


def ask(classes, table, cfg, named, unknown=PASS, temperature=T, **overrides):
    return advise(vec(classes, named), classes, {**cfg.predict, **overrides}, table, unknown=unknown,
                  temperature=temperature)


def says_do_not_eat(answer) -> bool:
    return any("do not eat" in r.lower() for r in answer.reasons)


def test_config_thresholds_the_tests_rely_on(cfg):
    p = cfg.predict
    assert (p.top_k, p.edible_threshold, p.danger_threshold, p.not_edible_threshold) == (5, 0.9, 0.02, 0.5)


# --- threshold edges ------------------------------------------------------------------------------
def test_edible_exactly_at_threshold_uncertain_just_below(cfg, classes, table):
    # Pleurotus ostreatus: choice, no look-alike either way in the table
    at = ask(classes, table, cfg, {"Pleurotus ostreatus": 0.90})
    assert at.certainty == 0.90 and at.certainty_level == "high"
    assert at.verdict == "edible"
    assert at.look_alikes == []

    below = ask(classes, table, cfg, {"Pleurotus ostreatus": 0.8999})
    assert below.verdict == "uncertain"
    assert below.certainty_level == "medium"
    assert says_do_not_eat(below)
    # the percentage is not rounded up to the threshold it failed
    assert any("89.99%" in r and "below the 90%" in r for r in below.reasons)


@pytest.mark.parametrize("p_deadly, verdict", [
    (0.03, "uncertain"),   # a deadly species at 3% in the top five blocks "edible"
    (0.0201, "uncertain"),
    (0.02, "edible"),      # exactly at the threshold does not block (> is the rule)
    (0.01, "edible"),
])
def test_deadly_species_in_top_five_blocks_edible(cfg, classes, table, p_deadly, verdict):
    a = ask(classes, table, cfg, {"Pleurotus ostreatus": 0.92, "Amanita phalloides": p_deadly})
    assert [t["species"] for t in a.top[:2]] == ["Pleurotus ostreatus", "Amanita phalloides"]
    assert a.verdict == verdict
    blocked = [r for r in a.reasons if r.startswith("Amanita phalloides (Death cap), graded deadly")]
    assert bool(blocked) == (verdict == "uncertain")
    if verdict == "uncertain":
        assert "above the 2%" in blocked[0]
        assert says_do_not_eat(a)


def test_danger_check_covers_classes_beyond_top_k(cfg, classes, table):
    a = ask(classes, table, cfg, {"Pleurotus ostreatus": 0.92, "Paxillus involutus": 0.05}, top_k=1)
    assert [t["species"] for t in a.top] == ["Pleurotus ostreatus"]
    assert a.verdict == "uncertain"
    assert any(r.startswith("Paxillus involutus") for r in a.reasons)


# --- grades ---------------------------------------------------------------------------------------
def test_caution_species_is_edible_with_its_note_and_dangerous_look_alike(cfg, classes, table):
    a = ask(classes, table, cfg, {"Amanita rubescens": 0.95})
    assert a.verdict == "edible"
    assert "Amanita rubescens is graded caution: toxic raw; edible only well cooked." in a.reasons
    # its dangerous look-alike is named in the reasons, with the model's probability for it
    panther = [r for r in a.reasons if "Amanita pantherina" in r]
    assert len(panther) == 1 and "poisonous" in panther[0] and "rule it out" in panther[0]
    assert {"name": "Amanita pantherina", "of_species": "Amanita rubescens", "edibility": "poisonous",
            "in_model": True, "note": ""} in a.look_alikes


@pytest.mark.parametrize("species, p, verdict, level", [
    ("Amanita muscaria", 0.80, "not_edible", "medium"),   # poisonous, confident
    ("Amanita muscaria", 0.50, "not_edible", "medium"),   # exactly at not_edible_threshold
    ("Amanita muscaria", 0.30, "uncertain", "low"),       # poisonous but weak evidence
    ("Paxillus involutus", 0.95, "not_edible", "high"),   # deadly
    ("Schizophyllum commune", 0.70, "not_edible", "medium"),  # inedible
])
def test_not_edible_top1_with_high_and_low_confidence(cfg, classes, table, species, p, verdict, level):
    a = ask(classes, table, cfg, {species: p})
    assert a.verdict == verdict
    assert a.certainty_level == level
    assert says_do_not_eat(a)  # both verdicts tell the forager not to eat it
    grade = by_name(table)[species].edibility
    assert f"{species} is graded {grade}: " in " ".join(a.reasons) or verdict == "uncertain"


def test_edible_top1_below_threshold_with_deadly_runner_up(cfg, classes, table):
    a = ask(classes, table, cfg, {"Lycoperdon perlatum": 0.60, "Amanita phalloides": 0.35})
    assert a.verdict == "uncertain" and a.certainty_level == "medium"
    assert any("only 60.0%" in r for r in a.reasons)
    assert any(r.startswith("Amanita phalloides (Death cap), graded deadly, holds 35.0%") for r in a.reasons)


def test_edible_needs_a_score_below_the_stricter_edible_threshold(cfg, classes, table):
    sure = vec(classes, {"Pleurotus ostreatus": 0.999})
    check = lambda score: UnknownCheck(score, 0.25, "energy", 0.95, edible_threshold=0.15, edible_recall=0.99)
    assert advise(sure, classes, cfg.predict, table, unknown=check(0.149), temperature=T).verdict == "edible"
    between = advise(sure, classes, cfg.predict, table, unknown=check(0.15), temperature=T)  # not flagged, not edible either
    assert between.verdict == "uncertain" and between.rules == ["unknown_margin"]
    assert not between.to_json()["unknown_flagged"] and between.to_json()["unknown_edible_threshold"] == 0.15
    assert any("not typical enough" in r for r in between.reasons)
    assert any("at or above 0.15, the stricter limit" in r and "99% of photos" in r for r in between.reasons)
    assert advise(sure, classes, cfg.predict, table, unknown=check(0.25), temperature=T).verdict == "unknown"
    # the margin only ever takes "edible" away: a confident poisonous answer is unchanged by it
    amanita = vec(classes, {"Amanita phalloides": 0.999})
    assert advise(amanita, classes, cfg.predict, table, unknown=check(0.2), temperature=T).verdict == "not_edible"
    record = {"score": "energy", "threshold": 0.25, "unknown_recall": 0.95, "edible_threshold": 0.15, "edible_recall": 0.99}
    assert UnknownCheck.from_record(0.2, record) == check(0.2)
    # a find: the mean of its photos' scores passes both limits, but one photo is too unfamiliar
    find = UnknownCheck.from_record(0.10, record, worst_photo_score=0.22)
    answer = advise(sure, classes, cfg.predict, table, unknown=find, temperature=T)
    assert not find.flagged and answer.verdict == "uncertain" and answer.rules == ["unknown_margin"]
    assert any(r.startswith("One of its photos has an unknown-species score of 0.22") for r in answer.reasons)
    assert advise(sure, classes, cfg.predict, table, temperature=T,
                  unknown=UnknownCheck.from_record(0.10, record, worst_photo_score=0.12)).verdict == "edible"
    # no stricter threshold at all (an open_set.json of an older evaluate.py): never "edible"
    old = UnknownCheck(0.01, 0.25, "energy", 0.95)
    answer = advise(sure, classes, cfg.predict, table, unknown=old, temperature=T)
    assert answer.verdict == "uncertain" and answer.rules == ["unknown_margin"]
    assert any("no stricter limit for 'edible'" in r and "rerun evaluate.py" in r for r in answer.reasons)


def test_a_flagged_photo_is_never_edible(cfg, classes, table):
    sure = vec(classes, {"Pleurotus ostreatus": 0.999})
    passed = advise(sure, classes, cfg.predict, table, temperature=T,
                    unknown=UnknownCheck(0.10, 0.25, "energy", 0.95, edible_threshold=0.2))
    assert passed.verdict == "edible" and not passed.to_json()["unknown_flagged"]
    flagged = advise(sure, classes, cfg.predict, table, temperature=T,
                     unknown=UnknownCheck(0.25, 0.25, "energy", 0.95, edible_threshold=0.2))
    assert flagged.verdict == "unknown" and flagged.rules == ["unknown_species"]
    assert flagged.top[0]["species"] == "Pleurotus ostreatus"   # what it resembles is still shown
    assert any("does not look like any of the 51 species" in r and "95%" in r for r in flagged.reasons)
    out = flagged.to_json()
    assert (out["unknown_score"], out["unknown_threshold"], out["unknown_flagged"], out["known_species"]) == (
        0.25, 0.25, True, 51)
    assert "Verdict: UNKNOWN SPECIES - DO NOT EAT" in format_text(flagged)


def test_without_a_fitted_check_or_temperature_nothing_is_edible(cfg, classes, table):
    """A folder never evaluated (or copied without open_set.json / temperature.json): the answer
    that would be "edible" is "uncertain", and says why and what to run."""
    assert ask(classes, table, cfg, {"Pleurotus ostreatus": 0.95}).verdict == "edible"     # with both
    a = ask(classes, table, cfg, {"Pleurotus ostreatus": 0.95}, unknown=None)
    assert a.verdict == "uncertain" and a.rules == ["no_unknown_check"] and a.to_json()["unknown_score"] is None
    assert any("No unknown-species check is fitted" in r and "Run evaluate.py" in r for r in a.reasons)
    assert any("never checked against photos of species it does not know" in r for r in a.reasons)
    assert "Unknown-species check: none fitted" in format_text(a)
    a = ask(classes, table, cfg, {"Pleurotus ostreatus": 0.95}, temperature=None)
    assert a.verdict == "uncertain" and a.rules == ["not_calibrated"]
    assert any("No temperature is fitted" in r for r in a.reasons)
    a = ask(classes, table, cfg, {"Pleurotus ostreatus": 0.95}, unknown=None, temperature=None)
    assert a.rules == ["no_unknown_check", "not_calibrated"] and a.verdict == "uncertain"
    # a confident poisonous answer needs no check to say "do not eat"
    a = ask(classes, table, cfg, {"Amanita muscaria": 0.95}, unknown=None, temperature=None)
    assert a.verdict == "not_edible" and says_do_not_eat(a)


# --- look-alikes ----------------------------------------------------------------------------------
def test_look_alikes_resolved_from_the_table(cfg, classes, table):
    # the puffball's look-alike is the death cap's egg: deadly, and no photo of an adult death cap
    # teaches it, so "edible" is ruled out although the model knows the death cap (rule deadly_look_alike)
    a = ask(classes, table, cfg, {"Lycoperdon perlatum": 0.95})
    assert {"name": "Amanita phalloides", "of_species": "Lycoperdon perlatum", "edibility": "deadly",
            "in_model": True, "note": "egg stage"} in a.look_alikes
    assert a.verdict == "uncertain" and a.rules == ["deadly_look_alike"]
    assert any(r.startswith("Lycoperdon perlatum has a look-alike, Amanita phalloides, graded deadly (egg stage), "
                            "that a photo cannot tell apart from it") for r in a.reasons)
    assert says_do_not_eat(a)

    # a look-alike outside the table: ungraded, never learnt, so "edible" is ruled out (rule
    # unknown_look_alike) however sure the model is
    a = ask(classes, table, cfg, {"Kuehneromyces mutabilis": 0.95})
    assert a.look_alikes == [{"name": "Galerina marginata", "of_species": "Kuehneromyces mutabilis",
                              "edibility": UNKNOWN_EDIBILITY, "in_model": False, "note": "deadly"}]
    assert a.verdict == "uncertain" and a.rules == ["unknown_look_alike"]
    assert any("Galerina marginata, not in the species table (deadly)" in r and "cannot tell the two apart" in r
               for r in a.reasons)
    # graded by the evaluation-only species: the same rule, now naming the grade
    a = ask(classes, graded_species(cfg), cfg, {"Kuehneromyces mutabilis": 0.95})
    assert a.look_alikes[0]["edibility"] == "deadly" and a.rules == ["unknown_look_alike"]
    assert any("Galerina marginata, graded deadly" in r for r in a.reasons)
    # an unseen look-alike that is only bitter does not block: Tylopilus felleus is graded inedible
    assert ask(classes, graded_species(cfg), cfg, {"Boletus edulis": 0.95}).verdict == "edible"

    # the table lists look-alikes one way; a death cap photo still gets the species that list it
    a = ask(classes, table, cfg, {"Amanita phalloides": 0.9})
    assert {"Amanita citrina", "Lycoperdon perlatum", "Phallus impudicus"} <= {la["name"] for la in a.look_alikes}


def test_look_alike_in_table_but_not_among_the_models_classes(cfg, table):
    t = by_name(table)
    classes = [t["Amanita rubescens"], t["Boletus edulis"], t["Amanita muscaria"]]
    a = advise(np.array([0.95, 0.04, 0.01]), classes, cfg.predict, table, unknown=PASS, temperature=T)
    assert {"name": "Amanita pantherina", "of_species": "Amanita rubescens", "edibility": "poisonous",
            "in_model": False, "note": ""} in a.look_alikes
    # the model never saw the panther cap, so it cannot rule it out: never "edible"
    assert a.verdict == "uncertain" and a.rules == ["unknown_look_alike"]
    assert any("Amanita pantherina, graded poisonous" in r and "never trained on" in r for r in a.reasons)
    # with the panther cap among its classes, the model weighs it itself
    classes = [t["Amanita rubescens"], t["Boletus edulis"], t["Amanita pantherina"]]
    assert advise(np.array([0.95, 0.04, 0.01]), classes, cfg.predict, table, unknown=PASS,
                  temperature=T).verdict == "edible"


def test_parse_look_alikes_rejoins_split_parentheses():
    # config.yaml holds the CSV's "Tylopilus felleus (not in list; bitter)" split at the ';'
    assert parse_look_alikes(["Tylopilus felleus (not in list", "bitter)"]) == [("Tylopilus felleus", "bitter")]
    assert parse_look_alikes(["Tylopilus felleus (not in list; bitter)"]) == [("Tylopilus felleus", "bitter")]
    assert parse_look_alikes(["Amanita pantherina", "Chlorophyllum molybdites (not in list)"]) == [
        ("Amanita pantherina", ""), ("Chlorophyllum molybdites", "")]
    assert parse_look_alikes(["Amanita phalloides (egg stage)", ""]) == [("Amanita phalloides", "egg stage")]


# --- JSON and text --------------------------------------------------------------------------------
@pytest.mark.parametrize("top_k", [5, 3])
def test_json_keys_are_stable_and_serialisable(cfg, classes, table, top_k):
    for named in ({"Boletus edulis": 0.97}, {"Amanita muscaria": 0.8}, {"Amanita rubescens": 0.4}):
        a = ask(classes, table, cfg, named, top_k=top_k)
        out = json.loads(json.dumps(a.to_json("forest/IMG_1.jpg"), allow_nan=False))
        assert tuple(out) == JSON_KEYS
        assert out["image"] == "forest/IMG_1.jpg"
        assert len(out["top5"]) == top_k
        for entry in out["top5"]:
            assert set(entry) == {"species", "common_name", "probability", "edibility"}
            assert isinstance(entry["probability"], float)
        probs = [e["probability"] for e in out["top5"]]
        assert probs == sorted(probs, reverse=True)
        assert set(out["certainty"]) == {"probability", "level"}
        assert out["verdict"] in VERDICTS and set(out["rules"]) <= set(RULES)
        assert out["reasons"][-1] == REMINDER
        for la in out["look_alikes"]:
            assert set(la) == {"name", "of_species", "edibility", "in_model", "note"}


def test_text_answer_has_table_verdict_reasons_and_reminder(cfg, classes, table):
    a = ask(classes, table, cfg, {"Amanita rubescens": 0.93, "Amanita pantherina": 0.015})
    text = format_text(a, "IMG_2.jpg")
    lines = text.splitlines()
    assert lines[0] == "IMG_2.jpg"
    row = next(line for line in lines if "Amanita rubescens" in line)
    assert "Blusher" in row and "93.0%" in row and "caution: toxic raw; edible only well cooked" in row
    assert "Verdict: EDIBLE" in text
    assert "Certainty: 93.0% (high)" in text
    assert lines[-1] == REMINDER and text.count(REMINDER) == 1
    assert "Amanita pantherina, look-alike of Amanita rubescens: poisonous" in text

    for named, verdict_line in (({"Amanita muscaria": 0.8}, "Verdict: NOT EDIBLE"),
                                ({"Boletus edulis": 0.5}, "Verdict: UNCERTAIN - DO NOT EAT")):
        text = format_text(ask(classes, table, cfg, named), "x.jpg")
        assert verdict_line in text and text.rstrip().endswith(REMINDER)


def test_bad_probability_vectors(cfg, classes, table):
    with pytest.raises(ValueError, match="51 class probabilities"):
        advise(np.full(3, 1 / 3), classes, cfg.predict, table)
    bad = vec(classes, {"Boletus edulis": 0.9})
    bad[0] = -0.1
    with pytest.raises(ValueError, match="non-negative"):
        advise(bad, classes, cfg.predict, table)
    # an int8 softmax that sums to 0.98 is renormalised before the thresholds apply
    p = vec(classes, {"Boletus edulis": 0.9}) * 0.98
    assert advise(p, classes, cfg.predict, table).certainty == pytest.approx(0.9)


def test_demo_config_classes_work(table):
    demo = load_config("configs/demo.yaml", ["wandb.mode=disabled"])
    classes = selected_species(demo)
    p = np.full(len(classes), 0.01)
    p[[s.name for s in classes].index("Macrolepiota procera")] = 1 - 0.01 * (len(classes) - 1)
    a = advise(p, classes, demo.predict, graded_species(demo), unknown=PASS, temperature=T)
    # pantherina holds 1% <= 2%, but the false parasol was never learnt: not "edible"
    assert a.verdict == "uncertain" and a.rules == ["unknown_look_alike"]
    assert any("Chlorophyllum molybdites, graded poisonous" in r for r in a.reasons)
    # the king bolete's unseen look-alike is only bitter: the demo model may call it edible
    p = np.full(len(classes), 0.01)
    p[[s.name for s in classes].index("Boletus edulis")] = 1 - 0.01 * (len(classes) - 1)
    assert advise(p, classes, demo.predict, graded_species(demo), unknown=PASS, temperature=T).verdict == "edible"
    # the honey fungus's look-alike, the funeral bell, is deadly and never learnt: never "edible"
    p = np.full(len(classes), 0.01)
    p[[s.name for s in classes].index("Armillaria mellea")] = 1 - 0.01 * (len(classes) - 1)
    a = advise(p, classes, demo.predict, graded_species(demo), unknown=PASS, temperature=T)
    assert a.verdict == "uncertain" and a.rules == ["unknown_look_alike"]


def test_advice_module_does_not_import_tensorflow():
    code = "import sys, mushroom.advice; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- grades from the current table ----------------------------------------------------------------
def test_a_regraded_species_changes_an_existing_models_answer(cfg):
    """meta.json's grades are a snapshot of training: the answer follows the current table."""
    from mushroom.errors import UserError
    from mushroom.species import Species, classes_from_table

    table = graded_species(cfg)
    names = ["Boletus edulis", "Amanita muscaria", "Hypholoma fasciculare"]   # a model's class order
    p = np.array([0.97, 0.02, 0.01])
    before = advise(p, classes_from_table(names, table), cfg.predict, table, unknown=PASS, temperature=T)
    assert before.verdict == "edible"
    regraded = [Species(s.name, s.common_name, s.taxon_id, "poisonous", "re-graded in a test", s.look_alikes)
                if s.name == "Boletus edulis" else s for s in table]
    after = advise(p, classes_from_table(names, regraded), cfg.predict, regraded, unknown=PASS, temperature=T)
    assert after.verdict == "not_edible" and after.top[0]["edibility"] == "poisonous"
    assert any("Boletus edulis is graded poisonous" in r for r in after.reasons)
    with pytest.raises(UserError, match="Boletus edulis is not in the species table"):
        classes_from_table(names, [s for s in table if s.name != "Boletus edulis"])


# --- deadly look-alikes ---------------------------------------------------------------------------
def test_deadly_look_alike_of_any_likely_species_blocks_edible(cfg, classes, table):
    # the oyster mushroom has no look-alike; a puffball at 3% (> danger_threshold) brings the death
    # cap's egg along: a photo that might be a puffball might be that egg
    a = ask(classes, table, cfg, {"Pleurotus ostreatus": 0.95, "Lycoperdon perlatum": 0.03})
    assert a.verdict == "uncertain" and a.rules == ["deadly_look_alike"]
    assert any(r.startswith("Lycoperdon perlatum has a look-alike, Amanita phalloides") for r in a.reasons)
    # at 2% (not above the threshold) the puffball does not count
    assert ask(classes, table, cfg, {"Pleurotus ostreatus": 0.95, "Lycoperdon perlatum": 0.02}).verdict == "edible"


def test_poisonous_look_alike_in_a_stage_or_form_blocks_edible(cfg):
    from mushroom.look_alikes import always_blocks
    from mushroom.species import Species

    table = [Species("Edulis a", "A", 1, "choice", "", ("Toxica b (young)",)),
             Species("Toxica b", "B", 2, "poisonous"),
             Species("Edulis c", "C", 3, "edible", "", ("Toxica b",)),
             Species("Edulis d", "D", 4, "edible", "", ("Outsider e (not in list; dried)",))]
    classes = table
    for name, verdict, rules in (("Edulis a", "uncertain", ["deadly_look_alike"]),
                                 ("Edulis c", "edible", ["confident_edible"]),          # plain poisonous: weighed
                                 ("Edulis d", "uncertain", ["unknown_look_alike"])):   # ungraded, never learnt
        a = ask(classes, table, cfg, {name: 0.97})
        assert (a.verdict, a.rules) == (verdict, rules), name
    la = lambda grade, note, in_model=True: {"edibility": grade, "note": note, "in_model": in_model}
    assert always_blocks(la("deadly", "")) and always_blocks(la(UNKNOWN_EDIBILITY, "deadly"))
    assert always_blocks(la("poisonous", "egg stage")) and always_blocks(la("poisonous", "dried"))
    assert not always_blocks(la("poisonous", "")) and not always_blocks(la("inedible", "young"))
    assert not always_blocks(la("poisonous", "bitter"))


# --- non-finite numbers -----------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["score", "threshold", "edible_threshold", "worst_photo_score"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_unknown_check_is_refused(field, value):
    """`NaN >= threshold` is False: a NaN score would pass as "not flagged" if it were accepted."""
    args = {"score": 0.1, "threshold": 0.5, "name": "energy", "edible_threshold": 0.3, "worst_photo_score": 0.2}
    args[field] = value
    with pytest.raises(ValueError, match="not a finite number"):
        UnknownCheck(**args)


def test_non_finite_probabilities_or_temperature_get_no_verdict(cfg, classes, table):
    p = vec(classes, {"Boletus edulis": 0.97})
    for bad in (float("nan"), float("inf")):
        q = p.copy()
        q[3] = bad
        with pytest.raises(ValueError, match="finite"):
            advise(q, classes, cfg.predict, table, unknown=PASS, temperature=T)
        with pytest.raises(ValueError, match="temperature"):
            advise(p, classes, cfg.predict, table, unknown=PASS, temperature=bad)


# --- the invariant, as a property over generated cases, in Python and in the page ----------------------
EDIBLE_GRADES_ = ("choice", "edible", "caution")
STAGE_WORDS = ("egg", "stage", "young", "button", "juvenile", "immature", "dried", "dry", "form")
NOTES = ("", "egg stage", "young", "dried", "deadly", "bitter", "not in list", "not in list; deadly",
         "not in list; egg stage", "rare")
PROPERTY_RUNS: dict[str, int] = {}


def _is_deadly_or_stage(grade: str | None, note: str) -> bool:
    """Written apart from look_alikes.always_blocks, from the issue's words: a deadly look-alike, or a
    poisonous (or ungraded) one whose note names a stage or form."""
    words = set(note.lower().replace(";", " ").split())
    return grade == "deadly" or "deadly" in words or (grade in ("poisonous", "deadly", None) and bool(words & set(STAGE_WORDS)))


def edible_invariant(case: dict, answer: dict) -> None:
    """What an "edible" answer implies, checked from the case alone (not from advise's code)."""
    from mushroom.answer_text import REMINDER as reminder

    assert answer["reasons"][-1] == reminder
    check, temperature = case["check"], case["temperature"]
    if check is not None and check["score"] >= check["threshold"]:
        assert answer["verdict"] == "unknown"
    if answer["verdict"] != "edible":
        assert any("do not eat" in r.lower() for r in answer["reasons"])
        return
    grades = {s["name"]: s["edibility"] for s in case["table"]}
    listed = {s["name"]: [n for n, _ in parse_look_alikes(s["look_alikes"])] for s in case["table"]}
    notes = {(s["name"], n): note for s in case["table"] for n, note in parse_look_alikes(s["look_alikes"])}
    classes = case["classes"]
    p = np.asarray(case["p"], np.float64)
    p = p / p.sum() if abs(p.sum() - 1) > 1e-6 else p
    cfg = case["predict"]
    top1 = classes[int(np.argmax(p))]
    # a fitted check for this format, a finite score below the stricter limit for every photo
    assert check is not None and temperature is not None
    assert check["edible_threshold"] is not None
    worst = max(check["score"], check["worst_photo_score"] if check["worst_photo_score"] is not None else -np.inf)
    assert np.isfinite(worst) and worst < check["edible_threshold"] and check["score"] < check["threshold"]
    # the current table's grade, confidence
    assert grades[top1] in EDIBLE_GRADES_ and p.max() >= cfg["edible_threshold"]
    # no dangerous class above the danger threshold
    assert all(p[i] <= cfg["danger_threshold"] for i, c in enumerate(classes) if grades[c] in ("poisonous", "deadly"))

    def look_alikes(name):   # both directions of the table
        out = [(n, notes[(name, n)]) for n in listed.get(name, [])]
        out += [(other, "") for other, names in listed.items() if name in names and other not in listed.get(name, [])]
        return [(n, note) for n, note in out if n != name]
    likely = [top1] + [c for i, c in enumerate(classes) if p[i] > cfg["danger_threshold"]]
    for name in likely:
        for la, note in look_alikes(name):
            assert not _is_deadly_or_stage(grades.get(la), note), (name, la, note)
    for la, note in look_alikes(top1):   # no dangerous or ungraded look-alike the model never learnt
        assert la in classes or grades.get(la) not in ("poisonous", "deadly", None), (top1, la)


def _case_strategy():
    from hypothesis import strategies as st

    @st.composite
    def cases(draw):
        # Half the cases are "friendly": fitted check passed, temperature fitted, an edible class
        # far ahead, few look-alikes, so that "edible" is common and the invariant is tested on it.
        friendly = draw(st.booleans())
        n = draw(st.integers(2, 7))
        names = [f"Genus{k} species" for k in range(n)]
        outsiders = ["Outsider x", "Outsider y"]
        table = []
        for name in names:
            las = draw(st.lists(st.tuples(st.sampled_from(names + outsiders), st.sampled_from(NOTES)),
                                max_size=1 if friendly else 3))
            grades = ["choice", "edible", "caution", "inedible", "poisonous", "deadly"]
            table.append({"name": name, "common_name": draw(st.sampled_from(["", f"Common {name[:7]}"])),
                          "taxon_id": 1, "edibility": draw(st.sampled_from(grades[:4] if friendly else grades)),
                          "notes": draw(st.sampled_from(["", "toxic raw", "cook well"])),
                          "look_alikes": [f"{la} ({note})" if note else la for la, note in las if la != name]})
        k = draw(st.integers(1, n))
        classes = draw(st.permutations(names))[:k]
        p = draw(st.lists(st.floats(0, 1), min_size=k, max_size=k))
        boost = draw(st.integers(0, k - 1))
        p[boost] += draw(st.sampled_from([1000.0] if friendly else [0.0, 0.5, 5.0, 50.0, 1000.0]))
        if sum(p) <= 0:
            p[boost] = 1.0
        predict = {"top_k": draw(st.integers(1, k + 1)),
                   "edible_threshold": draw(st.sampled_from([0.5, 0.8, 0.9, 0.99])),
                   "danger_threshold": draw(st.sampled_from([0.0, 0.02, 0.05, 0.2])),
                   "not_edible_threshold": draw(st.sampled_from([0.3, 0.5, 0.9]))}
        check = None
        if friendly:
            check = {"score": draw(st.floats(-1.0, 0.09)), "threshold": 0.5, "name": "energy", "recall": 0.95,
                     "edible_threshold": 0.1, "edible_recall": 0.99,
                     "worst_photo_score": draw(st.sampled_from([None, 0.05, 0.0999, 0.1]))}
        elif draw(st.integers(0, 4)):
            threshold = draw(st.sampled_from([0.2, 0.5, 3.0]))
            edible_t = draw(st.sampled_from([None, threshold, threshold / 2, threshold - 1e-9]))
            score = draw(st.sampled_from([0.0, threshold / 2 - 1e-9, threshold / 2, threshold, threshold - 1e-9,
                                          threshold + 1.0]) | st.floats(-1.0, 4.0))
            worst = draw(st.sampled_from([None, None, score, threshold / 2, threshold * 2]))
            check = {"score": score, "threshold": threshold, "name": "energy", "recall": 0.95,
                     "edible_threshold": edible_t, "edible_recall": 0.99 if edible_t is not None else None,
                     "worst_photo_score": worst}
        temperature = draw(st.sampled_from([1.0] if friendly else [None, 1.0, 1.7]))
        return {"table": table, "classes": classes, "p": p, "predict": predict, "check": check,
                "temperature": temperature}

    return cases()


def test_edible_invariant_holds_in_python_and_in_the_page(cfg):
    """Over generated tables (grades, look-alikes both ways, stage and form notes, species outside
    the table), class subsets, probability vectors, thresholds and check states (none, fitted, at
    and around each limit, finds), every "edible" answer of advice.advise satisfies the invariant
    (edible_invariant, written from the rules' words, not from advise's code); then the page's
    decision.js answers the same cases from the bundle app.rules_bundle builds for model.json, and
    gives the same JSON answers, so the invariant holds there too."""
    from hypothesis import HealthCheck, given, settings

    from mushroom.app import rules_bundle
    from mushroom.species import Species
    from tests.nodejs import run_node

    collected = []

    @settings(max_examples=600, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_case_strategy())
    def check_python(case):
        table = [Species.from_dict(s) for s in case["table"]]
        by = {s.name: s for s in table}
        classes = [by[n] for n in case["classes"]]
        check = None if case["check"] is None else UnknownCheck(**case["check"])
        answer = advise(case["p"], classes, case["predict"], table, image="photo.jpg", unknown=check,
                        temperature=case["temperature"]).to_json()
        edible_invariant(case, answer)
        bundle = rules_bundle(classes, table, case["predict"], case["temperature"], None)
        collected.append((case, bundle, answer))

    check_python()
    verdicts = {a["verdict"] for _, _, a in collected}
    rules = {r for _, _, a in collected for r in a["rules"]}
    assert verdicts == set(VERDICTS) and rules == set(RULES), (verdicts, set(RULES) - rules)
    got = run_node("""
import {advise} from './decision.js';
console.log(JSON.stringify(input.map(({bundle, case: c}) => advise(c.p, bundle, c.check, 'photo.jpg'))));
""", [{"bundle": b, "case": c} for c, b, _ in collected])
    assert len(got) == len(collected)
    for (case, _, expected), js in zip(collected, got):
        edible_invariant(case, js)
        assert js == expected, json.dumps({"case": case, "python": expected, "js": js}, indent=1)[:4000]
    PROPERTY_RUNS["cases"] = len(collected)
    print(f"\nproperty test: {len(collected)} generated cases, {sum(a['verdict'] == 'edible' for *_, a in collected)} "
          f"'edible', the same answers from decision.js")

import json
import subprocess
import sys

import numpy as np
import pytest

from mushroom.advice import (JSON_KEYS, REMINDER, RULES, UNKNOWN_EDIBILITY, VERDICTS, UnknownCheck, advise,
                             format_text, parse_look_alikes)
from mushroom.config import load_config
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


def ask(classes, table, cfg, named, **overrides):
    return advise(vec(classes, named), classes, {**cfg.predict, **overrides}, table)


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


def test_verdict_invariants_on_random_probability_vectors(cfg, classes, table):
    """Whatever the probabilities and the unknown-species score: "edible" only when every rule
    holds (never for a flagged photo, never with an unseen dangerous look-alike); any other answer
    says do not eat; reasons are full sentences ending with the reminder."""
    rng = np.random.default_rng(0)
    names = [s.name for s in classes]
    edible_ids = [i for i, s in enumerate(classes) if s.is_edible]
    graded = graded_species(cfg)
    seen = set()
    for trial in range(600):
        alpha = rng.choice([0.02, 0.1, 1.0])
        p = rng.dirichlet(np.full(len(classes), alpha))
        if trial % 3 == 0:  # make confident edible answers common enough to test
            p = 0.1 * p
            p[rng.choice(edible_ids)] += 0.9
        unknown = None if trial % 4 == 0 else UnknownCheck(float(rng.uniform()), 0.7, "msp", 0.95)
        a = advise(p, classes, cfg.predict, graded, unknown=unknown)
        seen.add(a.verdict)
        top1 = by_name(classes)[a.top[0]["species"]]
        assert a.rules and set(a.rules) <= set(RULES)
        if unknown is not None and unknown.score >= 0.7:
            assert a.verdict == "unknown" and a.rules == ["unknown_species"]
        if a.verdict == "edible":
            assert a.certainty >= 0.9 and top1.is_edible and a.rules == ["confident_edible"]
            assert all(p[i] <= 0.02 for i, s in enumerate(classes) if s.is_dangerous)
            assert unknown is None or not unknown.flagged
            assert not [la for la in a.look_alikes if la["of_species"] == top1.name and not la["in_model"]
                        and la["edibility"] in ("poisonous", "deadly", UNKNOWN_EDIBILITY)]
        else:
            assert says_do_not_eat(a)
        if a.verdict == "not_edible":
            assert not top1.is_edible and a.certainty >= 0.5
        assert a.certainty == pytest.approx(p.max())
        assert a.top[0]["species"] == names[int(np.argmax(p))]
        assert all(r[0].isupper() and r.endswith(".") for r in a.reasons)
        assert a.reasons[-1] == REMINDER
    assert seen == set(VERDICTS)


def test_edible_needs_a_score_below_the_stricter_edible_threshold(cfg, classes, table):
    sure = vec(classes, {"Pleurotus ostreatus": 0.999})
    check = lambda score: UnknownCheck(score, 0.25, "energy", 0.95, edible_threshold=0.15, edible_recall=0.99)
    assert advise(sure, classes, cfg.predict, table, unknown=check(0.149)).verdict == "edible"
    between = advise(sure, classes, cfg.predict, table, unknown=check(0.15))     # not flagged, not edible either
    assert between.verdict == "uncertain" and between.rules == ["unknown_margin"]
    assert not between.to_json()["unknown_flagged"] and between.to_json()["unknown_edible_threshold"] == 0.15
    assert any("not typical enough" in r for r in between.reasons)
    assert any("at or above 0.15, the stricter limit" in r and "99% of photos" in r for r in between.reasons)
    assert advise(sure, classes, cfg.predict, table, unknown=check(0.25)).verdict == "unknown"
    # the margin only ever takes "edible" away: a confident poisonous answer is unchanged by it
    amanita = vec(classes, {"Amanita phalloides": 0.999})
    assert advise(amanita, classes, cfg.predict, table, unknown=check(0.2)).verdict == "not_edible"
    record = {"score": "energy", "threshold": 0.25, "unknown_recall": 0.95, "edible_threshold": 0.15, "edible_recall": 0.99}
    assert UnknownCheck.from_record(0.2, record) == check(0.2)
    # a find: the mean of its photos' scores passes both limits, but one photo is too unfamiliar
    find = UnknownCheck.from_record(0.10, record, worst_photo_score=0.22)
    answer = advise(sure, classes, cfg.predict, table, unknown=find)
    assert not find.flagged and answer.verdict == "uncertain" and answer.rules == ["unknown_margin"]
    assert any(r.startswith("One of its photos has an unknown-species score of 0.22") for r in answer.reasons)
    assert advise(sure, classes, cfg.predict, table,
                  unknown=UnknownCheck.from_record(0.10, record, worst_photo_score=0.12)).verdict == "edible"


def test_a_flagged_photo_is_never_edible(cfg, classes, table):
    sure = vec(classes, {"Pleurotus ostreatus": 0.999})
    passed = advise(sure, classes, cfg.predict, table, unknown=UnknownCheck(0.10, 0.25, "energy", 0.95))
    assert passed.verdict == "edible" and not passed.to_json()["unknown_flagged"]
    flagged = advise(sure, classes, cfg.predict, table, unknown=UnknownCheck(0.25, 0.25, "energy", 0.95))
    assert flagged.verdict == "unknown" and flagged.rules == ["unknown_species"]
    assert flagged.top[0]["species"] == "Pleurotus ostreatus"   # what it resembles is still shown
    assert any("does not look like any of the 51 species" in r and "95%" in r for r in flagged.reasons)
    out = flagged.to_json()
    assert (out["unknown_score"], out["unknown_threshold"], out["unknown_flagged"], out["known_species"]) == (
        0.25, 0.25, True, 51)
    assert "Verdict: UNKNOWN SPECIES - DO NOT EAT" in format_text(flagged)


def test_without_a_threshold_the_answer_says_it_cannot_tell(cfg, classes, table):
    a = ask(classes, table, cfg, {"Pleurotus ostreatus": 0.95})
    assert a.verdict == "edible" and a.to_json()["unknown_score"] is None
    assert any("No unknown-species threshold" in r for r in a.reasons)


# --- look-alikes ----------------------------------------------------------------------------------
def test_look_alikes_resolved_from_the_table(cfg, classes, table):
    a = ask(classes, table, cfg, {"Lycoperdon perlatum": 0.95})
    assert {"name": "Amanita phalloides", "of_species": "Lycoperdon perlatum", "edibility": "deadly",
            "in_model": True, "note": "egg stage"} in a.look_alikes
    assert a.verdict == "edible"
    assert any("Amanita phalloides (egg stage)" in r and "deadly" in r for r in a.reasons)

    # a look-alike outside the table: ungraded, never learnt, so "edible" is ruled out (rule
    # unknown_look_alike) however sure the model is
    a = ask(classes, table, cfg, {"Kuehneromyces mutabilis": 0.95})
    assert a.look_alikes == [{"name": "Galerina marginata", "of_species": "Kuehneromyces mutabilis",
                              "edibility": UNKNOWN_EDIBILITY, "in_model": False, "note": "deadly"}]
    assert a.verdict == "uncertain" and a.rules == ["unknown_look_alike"]
    assert any("Galerina marginata, not in the species table (deadly)" in r and "cannot tell the two apart" in r
               for r in a.reasons)
    # graded by the evaluation-only species: the same rule, now naming the grade
    a = advise(vec(classes, {"Kuehneromyces mutabilis": 0.95}), classes, cfg.predict, graded_species(cfg))
    assert a.look_alikes[0]["edibility"] == "deadly" and a.rules == ["unknown_look_alike"]
    assert any("Galerina marginata, graded deadly" in r for r in a.reasons)
    # an unseen look-alike that is only bitter does not block: Tylopilus felleus is graded inedible
    a = advise(vec(classes, {"Boletus edulis": 0.95}), classes, cfg.predict, graded_species(cfg))
    assert a.verdict == "edible"

    # the table lists look-alikes one way; a death cap photo still gets the species that list it
    a = ask(classes, table, cfg, {"Amanita phalloides": 0.9})
    assert {"Amanita citrina", "Lycoperdon perlatum", "Phallus impudicus"} <= {la["name"] for la in a.look_alikes}


def test_look_alike_in_table_but_not_among_the_models_classes(cfg, table):
    t = by_name(table)
    classes = [t["Amanita rubescens"], t["Boletus edulis"], t["Amanita muscaria"]]
    a = advise(np.array([0.95, 0.04, 0.01]), classes, cfg.predict, table)
    assert {"name": "Amanita pantherina", "of_species": "Amanita rubescens", "edibility": "poisonous",
            "in_model": False, "note": ""} in a.look_alikes
    # the model never saw the panther cap, so it cannot rule it out: never "edible"
    assert a.verdict == "uncertain" and a.rules == ["unknown_look_alike"]
    assert any("Amanita pantherina, graded poisonous" in r and "never trained on" in r for r in a.reasons)
    # with the panther cap among its classes, the model weighs it itself
    classes = [t["Amanita rubescens"], t["Boletus edulis"], t["Amanita pantherina"]]
    assert advise(np.array([0.95, 0.04, 0.01]), classes, cfg.predict, table).verdict == "edible"


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
    a = advise(p, classes, demo.predict, graded_species(demo))
    # pantherina holds 1% <= 2%, but the false parasol was never learnt: not "edible"
    assert a.verdict == "uncertain" and a.rules == ["unknown_look_alike"]
    assert any("Chlorophyllum molybdites, graded poisonous" in r for r in a.reasons)
    # the king bolete's unseen look-alike is only bitter: the demo model may call it edible
    p = np.full(len(classes), 0.01)
    p[[s.name for s in classes].index("Boletus edulis")] = 1 - 0.01 * (len(classes) - 1)
    assert advise(p, classes, demo.predict, graded_species(demo)).verdict == "edible"


def test_advice_module_does_not_import_tensorflow():
    code = "import sys, mushroom.advice; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

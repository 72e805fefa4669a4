import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mushroom import openset
from mushroom.advice import JSON_KEYS
from mushroom.config import PROJECT_ROOT
from mushroom.errors import UserError
from mushroom.prediction import Forager, find_default_model, resolve_model


def _predict(t, *args):
    cmd = [sys.executable, "predict.py", *map(str, args), "--set", f"paths.models_dir={t['root'] / 'models'}",
           "--set", f"paths.reports_dir={t['root'] / 'noreports'}"]
    return subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)


def test_importing_the_predict_path_loads_no_tensorflow():
    code = ("import sys, runpy; sys.argv=['predict.py','--help']\n"
            "import mushroom.prediction, mushroom.litert, mushroom.advice, mushroom.metrics\n"
            "bad=[m for m in sys.modules if m.split('.')[0] in ('tensorflow','tf_keras','keras','sklearn')]\n"
            "print(bad); assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_model_resolution(tiny_model_folder):
    t = tiny_model_folder
    folder = t["folder"]
    assert find_default_model(t["root"] / "models") == folder / "tflite/ptq_int8.tflite"
    assert resolve_model(folder, None) == (folder / "tflite/ptq_int8.tflite", folder, "ptq_int8")
    assert resolve_model(folder / "tflite/float32.tflite", None)[2] == "float32"
    with pytest.raises(UserError, match="does not exist"):
        resolve_model(folder / "tflite/nope.tflite", None)
    with pytest.raises(UserError, match="not a .tflite file"):
        resolve_model(folder / "model.keras", None)
    with pytest.raises(UserError, match="no .tflite model found"):
        find_default_model(t["root"] / "empty")


def test_answers_real_photos_with_calibrated_probabilities(tiny_model_folder):
    t = tiny_model_folder
    cfg = t["cfg"]
    forager = Forager.load(cfg, str(t["folder"] / "tflite/ptq_int8.tflite"))
    photo = sorted((t["photos"] / "Boletus_edulis").glob("*.jpg"))[0]
    raw = forager.model.predict(np.asarray(Image.open(photo).convert("RGB").resize((32, 32)))[None])
    assert raw.shape == (1, 3)
    probs = forager.probabilities(photo)
    assert probs.shape == (3,) and abs(probs.sum() - 1) < 1e-6
    # never evaluated: no temperature, so the probabilities are softmax(logits) exactly
    out = forager.outputs([photo])
    z = out["logits"][0]
    np.testing.assert_allclose(probs, np.exp(z - z.max()) / np.exp(z - z.max()).sum(), rtol=1e-12)
    answer = forager.answer(photo)
    order = np.argsort(-probs, kind="stable")
    assert [a["species"] for a in answer.top] == [forager.species[i].name for i in order]
    assert answer.certainty == probs.max()
    # the folder has no open_set.json and no temperature.json: whatever the probabilities, no
    # "edible", and the answer says why
    assert forager.missing() == ["an unknown-species threshold for ptq_int8 (open_set.json)",
                                 "a temperature for ptq_int8 (temperature.json)"]
    assert answer.verdict != "edible" and answer.rules[-2:] == ["no_unknown_check", "not_calibrated"]


def test_cli_json_and_bad_inputs(tiny_model_folder, tmp_path):
    t = tiny_model_folder
    good = sorted((t["photos"] / "Amanita_muscaria").glob("*.jpg"))[:2]
    src = Image.open(good[0])
    bad_dir = tmp_path / "in"
    bad_dir.mkdir()
    (bad_dir / "notes.txt").write_text("not a photo")
    (bad_dir / "truncated.jpg").write_bytes(good[0].read_bytes()[:400])
    src.convert("L").save(bad_dir / "gray.jpg")
    rgba = src.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(bad_dir / "alpha.png")
    src.resize((4000, 3000)).save(bad_dir / "huge.jpg", quality=70)
    exif = Image.Exif()
    exif[0x0112] = 8
    src.save(bad_dir / "rotated.jpg", exif=exif.tobytes())
    out = _predict(t, *good, bad_dir / "gray.jpg", bad_dir / "alpha.png", bad_dir / "huge.jpg",
                   bad_dir / "rotated.jpg", bad_dir / "truncated.jpg", bad_dir / "notes.txt",
                   tmp_path / "missing.jpg", "--json", "--model", t["folder"])
    assert out.returncode == 1, out.stderr
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(answers) == 6
    for a in answers:
        assert tuple(a) == JSON_KEYS
        assert set(a["top5"][0]) == {"species", "common_name", "probability", "edibility"}
        assert abs(sum(x["probability"] for x in a["top5"]) - 1) < 1e-3
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3
    assert "Traceback" not in out.stderr
    assert "truncated.jpg" in errors[0] and "notes.txt" in errors[1]
    assert errors[2].count("missing.jpg") == 1 and "does not exist" in errors[2]


def test_cli_piped_into_a_reader_that_stops_exits_quietly(tiny_model_folder):
    """`predict.py ... --json | head -1`: the reader closes the pipe before the answers are
    written (here: before the model is even loaded), so every write fails with EPIPE."""
    t = tiny_model_folder
    cmd = [sys.executable, "predict.py", t["photos"] / "Boletus_edulis", "--json", "--model", t["folder"],
           "--set", f"paths.reports_dir={t['root'] / 'noreports'}"]
    proc = subprocess.Popen(list(map(str, cmd)), cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "Exception ignored" not in stderr


def test_cli_text_answer_and_folder_input(tiny_model_folder):
    t = tiny_model_folder
    out = _predict(t, t["photos"] / "Boletus_edulis")
    assert out.returncode == 0, out.stderr
    assert "XNNPACK" not in out.stderr and "INFO:" not in out.stderr   # LiteRT's start-up notice is hidden
    assert out.stdout.count("never enough to eat a wild mushroom") == 12
    assert "this model knows 3 species; no unknown-species threshold is fitted" in out.stdout
    # one line says what the folder lacks and what to run
    notes = [line for line in out.stderr.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: {t['folder']} lacks an unknown-species threshold for ptq_int8 (open_set.json) and a "
                     f"temperature for ptq_int8 (temperature.json), so no answer will be 'edible': run evaluate.py "
                     f"{t['folder']}"]
    assert "Verdict: EDIBLE" not in out.stdout


def test_cli_without_any_model_is_one_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "predict.py", "x.jpg", "--set", f"paths.models_dir={tmp_path}"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("error: no .tflite model found") and "Traceback" not in out.stderr


@pytest.fixture
def folder_with_threshold(tiny_model_folder, tmp_path):
    """A copy of the tiny model folder with an open_set.json (as evaluate.py writes it) whose
    threshold the test sets."""
    import shutil

    t = tiny_model_folder
    folder = tmp_path / "models" / t["folder"].name
    shutil.copytree(t["folder"], folder)

    def set_threshold(score: str, threshold: float, fusion: str = "mean", cfg=None):
        (folder / "open_set.json").write_text(json.dumps({
            "by_format": {"ptq_int8": {"score": score, "threshold": threshold, "unknown_recall": 0.95,
                                       "edible_threshold": threshold, "edible_recall": 0.95}},
            "fusion": fusion}))
        (folder / "temperature.json").write_text(json.dumps({"temperature": 1.5, "reference_format": "ptq_int8",
                                                             "by_format": {"ptq_int8": 1.5}}))
        return Forager.load(cfg or t["cfg"], str(folder / "tflite/ptq_int8.tflite"))
    set_threshold.folder = folder
    return set_threshold


def test_no_edible_answer_without_the_folders_check_or_temperature(tiny_model_folder, folder_with_threshold):
    """Thresholds low enough that the tiny model says "edible" on the king bolete's photos with
    a fitted check; the same folder without open_set.json, or without temperature.json (as an
    older deploy recipe copied it), gives none, on every photo of every species."""
    from mushroom.config import load_config

    t = tiny_model_folder
    loose = load_config(None, [*(f"{k}={v}" for k, v in (("image.size", 32), ("model.name", "tiny"),
                                                          ("model.weights", "null"), ("wandb.mode", "disabled"))),
                               "data.species_subset=[Amanita muscaria, Boletus edulis, Macrolepiota procera]",
                               "predict.edible_threshold=0.34", "predict.danger_threshold=1.0"])
    photos = sorted(t["photos"].rglob("*.jpg"))
    checked = folder_with_threshold("energy", 1e9, cfg=loose)
    with_check = [checked.answer(p).verdict for p in photos]
    assert with_check.count("edible") >= 3       # the rules below would have something to take away
    folder = folder_with_threshold.folder
    (folder / "open_set.json").unlink()
    no_check = Forager.load(loose, str(folder / "tflite/ptq_int8.tflite"))
    answers = [no_check.answer(p) for p in photos]
    assert [a.verdict for a in answers].count("edible") == 0
    assert all("no_unknown_check" in a.rules for a in answers)
    folder_with_threshold("energy", 1e9, cfg=loose)
    (folder / "temperature.json").unlink()
    uncalibrated = Forager.load(loose, str(folder / "tflite/ptq_int8.tflite"))
    assert [uncalibrated.answer(p).verdict for p in photos].count("edible") == 0
    # the folder's other format, never evaluated, has neither
    (folder / "temperature.json").write_text(json.dumps({"temperature": 1.5, "by_format": {"ptq_int8": 1.5}}))
    other = Forager.load(loose, str(folder / "tflite/float32.tflite"))
    assert other.temperature is None and other.open_set is None and len(other.missing()) == 2


def test_a_re_graded_species_changes_the_answer_of_an_existing_model(tiny_model_folder, folder_with_threshold,
                                                                     tmp_path):
    """Grades come from the current table, not from the snapshot in meta.json: the same folder and
    photo, with the king bolete re-graded poisonous in the config, is never "edible"."""
    from mushroom.config import load_config

    t = tiny_model_folder
    base = ["image.size=32", "model.name=tiny", "model.weights=null", "wandb.mode=disabled",
            "data.species_subset=[Amanita muscaria, Boletus edulis, Macrolepiota procera]",
            "predict.edible_threshold=0.34", "predict.danger_threshold=1.0", "predict.not_edible_threshold=0.34"]
    loose = load_config(None, base)
    checked = folder_with_threshold("energy", 1e9, cfg=loose)
    photos = sorted(t["photos"].rglob("*.jpg"))
    edible = [p for p in photos if checked.answer(p).verdict == "edible"]
    assert edible and all(checked.answer(p).top[0]["species"] == "Boletus edulis" for p in edible)
    # the user re-grades it in their config (species lists are replaced whole by a config that extends)
    import yaml

    species = [dict(s) for s in loose.species]
    next(s for s in species if s["name"] == "Boletus edulis")["edibility"] = "poisonous"
    (tmp_path / "regraded.yaml").write_text(yaml.safe_dump({"extends": str(PROJECT_ROOT / "config.yaml"),
                                                            "species": species}))
    regraded = load_config(tmp_path / "regraded.yaml", base)
    forager = Forager.load(regraded, str(folder_with_threshold.folder / "tflite/ptq_int8.tflite"))
    meta = json.loads((folder_with_threshold.folder / "meta.json").read_text())
    assert next(s for s in meta["species"] if s["name"] == "Boletus edulis")["edibility"] == "choice"  # snapshot
    for p in edible:
        a = forager.answer(p)
        assert a.verdict == "not_edible" and a.top[0]["edibility"] == "poisonous"


def test_non_finite_model_outputs_are_an_error_for_the_photo(tiny_model_folder, folder_with_threshold):
    """A model file that gives NaN or infinity (a broken conversion) gets a one-line error for that
    photo, never a verdict: NaN compared with any threshold is False, i.e. 'passed'."""
    forager = folder_with_threshold("energy", 1e9)
    photo = sorted((tiny_model_folder["photos"] / "Boletus_edulis").glob("*.jpg"))[0]
    real = forager.model

    class Broken:     # the runtime of a broken file: the real outputs with one value replaced
        def __init__(self, role, value):
            self.role, self.value = role, value

        def run(self, images):
            out = real.run(images)
            out[self.role] = np.array(out[self.role], np.float32)
            out[self.role].flat[0] = self.value
            return out

    for role in ("logits", "probs", "embedding"):
        for value in (np.nan, np.inf):
            forager.model = Broken(role, value)
            with pytest.raises(UserError, match=f"non-finite {role}"):
                forager.answer(photo)
    forager.model = real
    assert forager.answer(photo).verdict in ("edible", "uncertain", "not_edible")


def test_a_photo_flagged_by_the_model_folders_threshold_is_unknown(tiny_model_folder, folder_with_threshold):
    photos = sorted((tiny_model_folder["photos"] / "Pleurotus_ostreatus").glob("*.jpg"))[:4]
    everything = folder_with_threshold("energy", -1e9)      # every photo scores above: all flagged
    for photo in photos:
        a = everything.answer(photo).to_json()
        assert a["verdict"] == "unknown" and a["unknown_flagged"] and a["rules"] == ["unknown_species"]
        assert a["known_species"] == 3 and a["unknown_threshold"] == -1e9
    nothing = folder_with_threshold("energy", 1e9)
    for photo in photos:
        a = nothing.answer(photo).to_json()
        assert a["verdict"] != "unknown" and not a["unknown_flagged"]
        # the score is the model's own: -T logsumexp(logits / T) of this photo
        out = nothing.outputs([photo])
        assert a["unknown_score"] == pytest.approx(float(openset.unknown_scores(out, nothing.temperature)["energy"][0]))


def test_fused_answer_of_one_photo_is_the_single_answer(tiny_model_folder, folder_with_threshold):
    photos = sorted((tiny_model_folder["photos"] / "Boletus_edulis").glob("*.jpg"))[:3]
    for fusion in openset.FUSIONS:
        forager = folder_with_threshold("msp", 0.5, fusion)
        single = forager.answer(photos[0]).to_json()
        fused = forager.answer_outputs(forager.outputs(photos[:1]), [str(photos[0])]).to_json()
        assert fused == single
        # three photos: the geometric mean (or product) of the calibrated distributions
        out = forager.outputs(photos)
        lp = openset.log_probs(out, forager.temperature)
        combined = lp.mean(0) if fusion == "mean" else lp.sum(0)
        expected = np.exp(combined - np.log(np.exp(combined).sum()))
        three = forager.answer_outputs(forager.outputs(photos), [str(p) for p in photos])
        assert three.image == ", ".join(map(str, photos))
        assert three.certainty == pytest.approx(expected.max(), rel=1e-6)


def test_cli_one_mushroom_and_one_find_per_folder(tiny_model_folder, tmp_path):
    t = tiny_model_folder
    photos = sorted((t["photos"] / "Boletus_edulis").glob("*.jpg"))[:3]
    out = _predict(t, "--one-mushroom", *photos, tmp_path / "missing.jpg", "--json", "--model", t["folder"])
    assert out.returncode == 1 and out.stderr.count("error: ") == 1     # the missing photo, reported
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(answers) == 1 and answers[0]["image"] == ", ".join(map(str, photos))
    finds = tmp_path / "finds"
    for i, name in enumerate(("Boletus_edulis", "Amanita_muscaria")):
        (finds / f"find{i}").mkdir(parents=True)
        for p in sorted((t["photos"] / name).glob("*.jpg"))[:2]:
            shutil.copy(p, finds / f"find{i}" / p.name)
    out = _predict(t, "--find-per-folder", finds / "find0", finds / "find1", "--model", t["folder"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("one mushroom, 2 photos fused") == 2
    assert out.stdout.count("never enough to eat a wild mushroom") == 2

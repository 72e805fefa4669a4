import pytest
import yaml

from mushroom.config import DEFAULT_CONFIG, PROJECT_ROOT, load_config, save_resolved
from mushroom.errors import ConfigError
from tests.conftest import SHARED, need_shared


def test_main_config_lists_51_species_from_shared_table():
    import csv

    species_csv = need_shared(SHARED / "data" / "species.csv", "the table of the 51 species")
    cfg = load_config()
    table = list(csv.DictReader(species_csv.open()))
    assert len(cfg.species) == 51
    by_name = {s.name: s for s in cfg.species}
    for row in table:
        sp = by_name[row["scientific_name"]]
        assert sp.taxon_id == int(row["inat_taxon_id"])
        assert sp.edibility == row["edibility"]
        assert sp.common_name == row["common_name"]
        assert "; ".join(sp.look_alikes) == row["dangerous_look_alikes"]
        assert all(a.count("(") == a.count(")") for a in sp.look_alikes)


def test_interval_keys_default_and_override():
    cfg = load_config()
    assert cfg.evaluate.bootstrap_samples == 2000 and cfg.evaluate.confidence == 0.95
    cfg = load_config(None, ["evaluate.bootstrap_samples=100", "evaluate.confidence=0.9"])
    assert cfg.evaluate.bootstrap_samples == 100 and cfg.evaluate.confidence == 0.9


def test_demo_config_extends_main_and_overrides():
    cfg = load_config(PROJECT_ROOT / "configs/demo.yaml", ["train.batch_size=8", "model.weights=null"])
    assert cfg.image.size == 192
    assert cfg.train.batch_size == 8
    assert cfg.model.weights is None
    assert cfg.wandb.project == "mushroom-quantization"  # inherited
    assert len(cfg.data.species_subset) == 6
    assert load_config(None, ["quantize.qat_learning_rate=1e-4"]).quantize.qat_learning_rate == 1e-4


@pytest.mark.parametrize("override, message", [
    ("train.batch_sise=3", "unknown config key 'train.batch_sise'"),
    ("train.batch_size=abc", "'train.batch_size' must be an integer"),
    ("data.photo_size=huge", "'data.photo_size' must be one of"),
    ("data.licenses=[cc-by-nd]", "'data.licenses[0]' must be one of"),
    ("data.split.train=0.9", "'data.split' fractions must add up to 1"),
    ("species[0]=x", "unknown config key 'species[0]'"),
    ("novalue", "must look like key.subkey=value"),
    ("data.species_subset=[Amanita nonexistens]", "'data.species_subset[0]' names 'Amanita nonexistens'"),
    ("evaluate.bootstrap_samples=50", "'evaluate.bootstrap_samples' must be at least 100, got 50"),
    ("evaluate.bootstrap_samples=2000.5", "'evaluate.bootstrap_samples' must be an integer"),
    ("evaluate.confidence=0.9999", "'evaluate.confidence' must be between 0.5 and 0.999"),
    ("evaluate.confidence=0.4", "'evaluate.confidence' must be between 0.5 and 0.999"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def _write(tmp_path, mutate):
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    mutate(data)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bad_edibility_grade_is_rejected(tmp_path):
    def mutate(d):
        d["species"][3]["edibility"] = "tasty"
    with pytest.raises(ConfigError, match=r"'species\[3\].edibility' must be one of choice, edible"):
        load_config(_write(tmp_path, mutate))


def test_duplicate_species_is_rejected(tmp_path):
    def mutate(d):
        d["species"].append(dict(d["species"][0]))
    with pytest.raises(ConfigError, match=r"'species\[51\].name' repeats species 'Amanita muscaria'"):
        load_config(_write(tmp_path, mutate))


def test_misspelt_file_key_and_missing_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'trian' \(did you mean 'train'\?\)"):
        load_config(_write(tmp_path, lambda d: d.__setitem__("trian", d["train"])))
    with pytest.raises(ConfigError, match="config key 'image.size' is missing"):
        load_config(_write(tmp_path, lambda d: d["image"].pop("size")))


def test_wrong_type_in_file_and_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match="'seed' must be an integer"):
        load_config(_write(tmp_path, lambda d: d.__setitem__("seed", "forty")))
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(PROJECT_ROOT / "configs/demo.yaml", ["seed=7"])
    path = save_resolved(cfg, tmp_path / "out")
    again = load_config(path)
    assert again == cfg
    assert again.seed == 7

import pytest

from mushroom.errors import UserError
from mushroom.manifest import counts_table, read_manifest, write_manifest
from mushroom.species import Species, all_species, folder_name, selected_species


def test_folder_names_are_path_safe():
    assert folder_name("Amanita muscaria") == "Amanita_muscaria"
    assert folder_name("../../etc") == "etc"
    assert folder_name("a/b\\c d") == "a_b_c_d"
    with pytest.raises(UserError):
        folder_name("../..")


def test_species_grades_and_roundtrip(cfg):
    species = {s.name: s for s in all_species(cfg)}
    assert species["Amanita phalloides"].is_dangerous and not species["Amanita phalloides"].is_edible
    assert species["Amanita rubescens"].is_edible  # caution counts as edible (with preparation)
    assert not species["Amanita citrina"].is_edible and not species["Amanita citrina"].is_dangerous
    s = species["Macrolepiota procera"]
    assert Species.from_dict(s.to_dict()) == s
    assert "Amanita pantherina" in s.look_alikes


def test_subset_keeps_config_order(cfg):
    from mushroom.config import load_config

    sub = load_config(None, ["data.species_subset=[Boletus edulis, Amanita muscaria]"])
    assert [s.name for s in selected_species(sub)] == ["Amanita muscaria", "Boletus edulis"]
    assert len(selected_species(cfg)) == 51


def test_manifest_roundtrip_and_counts(tmp_path):
    rows = [{"photo_id": str(i), "observation_id": "o", "taxon_id": 1, "species": sp, "split": split,
             "path": f"{split}/x/{i}.jpg"} for i, (sp, split) in enumerate([("B", "val"), ("A", "train"), ("A", "test")])]
    write_manifest(tmp_path / "m.csv", rows)
    back = read_manifest(tmp_path / "m.csv")
    assert [r["split"] for r in back] == ["train", "val", "test"]
    assert back[0]["url"] == ""
    table = counts_table(back, {"failed": {"A": 2}})
    assert table.splitlines()[-1].split() == ["total", "1", "1", "1", "3", "2"]
    with pytest.raises(UserError, match="run download_data.py"):
        read_manifest(tmp_path / "missing.csv")

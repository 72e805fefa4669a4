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


def test_known_unknown_and_imported_species():
    from mushroom.config import PROJECT_ROOT, load_config
    from mushroom.species import evaluation_species, import_species, unknown_species

    demo = load_config(PROJECT_ROOT / "configs" / "demo.yaml")
    known = [s.name for s in selected_species(demo)]
    unknown = [s.name for s in unknown_species(demo)]
    assert len(known) == 6 and len(unknown) == 51 - 6 + len(evaluation_species(demo)) == 51
    assert not set(known) & set(unknown) and "Galerina marginata" in unknown
    assert [s.name for s in import_species(demo)] == known + unknown
    only = load_config(PROJECT_ROOT / "configs" / "demo.yaml", ["open_set.unknown_species=[Galerina marginata]"])
    assert [s.name for s in import_species(only)] == known + ["Galerina marginata"]


def test_counts_table_marks_each_species_role():
    from mushroom.manifest import KNOWN, UNKNOWN

    rows = [{"species": sp, "split": split} for sp, split in [("Boletus edulis", "train"), ("Amanita muscaria", "val"),
                                                             ("Galerina marginata", "test"), ("Other", "train")]]
    lines = counts_table(rows, roles={"Boletus edulis": KNOWN, "Amanita muscaria": KNOWN,
                                      "Galerina marginata": UNKNOWN}).splitlines()
    assert [line.split()[-1] for line in lines] == ["role", "known", "known", "unknown", "unused",
                                                    "2", "1", "1", "4"]  # subtotals have no role
    assert [line.split()[:2] for line in lines[-4:]] == [["total", "known"], ["total", "unknown"], ["total", "unused"],
                                                         ["total", "2"]]
    assert lines[-4].split()[2:] == ["1", "1", "0", "2"]

from collections import Counter

from mushroom.splits import assign_splits

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _sizes(n_species=4, n_groups=20):
    return {(f"s{k}", f"g{g}"): 1 + (g * 7 + k) % 5 for k in range(n_species) for g in range(n_groups)}


def test_fractions_are_met_per_species_by_photos():
    sizes = _sizes()
    out = assign_splits(sizes, FRACTIONS, seed=0)
    assert set(out) == set(sizes)
    for k in range(4):
        per = Counter()
        for (s, g), split in out.items():
            if s == f"s{k}":
                per[split] += sizes[(s, g)]
        total = sum(per.values())
        assert abs(per["train"] / total - 0.7) < 0.1
        assert per["val"] > 0 and per["test"] > 0


def test_seeded_and_seed_dependent():
    sizes = _sizes()
    assert assign_splits(sizes, FRACTIONS, 1) == assign_splits(sizes, FRACTIONS, 1)
    assert assign_splits(sizes, FRACTIONS, 1) != assign_splits(sizes, FRACTIONS, 2)


def test_small_species_get_every_split_and_tiny_ones_train_first():
    out = assign_splits({("a", "1"): 10, ("a", "2"): 1, ("a", "3"): 1, ("b", "1"): 3}, FRACTIONS, 0)
    assert sorted(out[("a", g)] for g in "123") == ["test", "train", "val"]
    assert out[("b", "1")] == "train"


def test_fixed_groups_never_move_and_count_towards_targets():
    sizes = _sizes(1, 20)
    first = assign_splits(sizes, FRACTIONS, 0)
    more = dict(sizes)
    more.update({("s0", f"new{i}"): 2 for i in range(10)})
    second = assign_splits(more, FRACTIONS, 0, fixed=first)
    assert all(second[k] == v for k, v in first.items())
    assert {second[("s0", f"new{i}")] for i in range(10)} >= {"train"}

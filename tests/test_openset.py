"""Unknown-species scores, threshold, AUROC, the species split and fusion, on constructed numbers."""
from __future__ import annotations

import numpy as np
import pytest

from mushroom import openset


def test_scores_from_logits():
    z = np.array([[4.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    out = {"logits": z, "probs": np.exp(z) / np.exp(z).sum(1, keepdims=True)}
    s = openset.unknown_scores(out, temperature=2.0)
    assert set(s) == {"msp", "energy", "max_logit"}            # no embedding: no Mahalanobis
    p = np.exp(z / 2) / np.exp(z / 2).sum(1, keepdims=True)
    np.testing.assert_allclose(s["msp"], 1 - p.max(1))
    np.testing.assert_allclose(s["energy"], -2.0 * np.log(np.exp(z / 2).sum(1)))
    np.testing.assert_allclose(s["max_logit"], -z.max(1))
    assert (s["msp"][1] > s["msp"][0]) and (s["max_logit"][1] > s["max_logit"][0])   # flat = less known
    # a file without logits (older exports) still gives msp, from its probabilities
    assert set(openset.unknown_scores({"probs": out["probs"]}, 1.0)) == {"msp"}


def test_mahalanobis_matches_the_definition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * [1, 2, 3, 4, 5]
    y = rng.integers(0, 3, 200)
    x[y == 1] += 4
    stats = openset.fit_feature_stats(x, y, 4)             # class 3 has no photos: skipped
    centred = x - np.stack([x[y == c].mean(0) for c in range(3)])[y]
    cov = centred.T @ centred / (len(x) - 4)
    cov = 0.9 * cov + 0.1 * np.trace(cov) / 5 * np.eye(5)
    probe = rng.normal(size=(7, 5))
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    expected = np.array([min((p - m) @ np.linalg.inv(cov) @ (p - m) for m in means) for p in probe])
    np.testing.assert_allclose(openset.mahalanobis(probe, stats), expected, rtol=1e-4)


def test_auroc_counts_ties_half_and_matches_the_rank_definition():
    assert openset.auroc([3, 4], [1, 2]) == 1.0 and openset.auroc([1, 2], [3, 4]) == 0.0
    assert openset.auroc([1, 1], [1, 1]) == 0.5
    rng = np.random.default_rng(1)
    u, k = rng.normal(1, 1, 50).round(1), rng.normal(0, 1, 60).round(1)
    pairs = np.mean([(a > b) + 0.5 * (a == b) for a in u for b in k])
    assert openset.auroc(u, k) == pytest.approx(pairs)
    assert np.isnan(openset.auroc([], [1.0]))


def test_choose_score_takes_the_best_and_ties_go_to_the_preferred():
    assert openset.choose_score({"msp": 0.7, "energy": 0.8, "mahalanobis": float("nan")}) == "energy"
    assert openset.choose_score({"mahalanobis": 0.7, "msp": 0.7}) == "msp"
    assert openset.choose_score({"rel_mahalanobis": 0.7, "msp": 0.7}) == "rel_mahalanobis"


def test_choose_score_by_species_folds_keeps_the_preferred_within_one_standard_error():
    fold = lambda mean, std: {"mean": mean, "std": std, "folds": [mean] * 4}
    # msp's 0.748 +- 0.08 over four folds (standard error 0.04) does not beat relative Mahalanobis' 0.738
    assert openset.choose_score({"msp": fold(0.748, 0.08), "rel_mahalanobis": fold(0.738, 0.05)}) == "rel_mahalanobis"
    # a clear lead does
    assert openset.choose_score({"msp": fold(0.85, 0.02), "rel_mahalanobis": fold(0.738, 0.05)}) == "msp"
    assert openset.choose_score({"energy": fold(0.8, 0.0), "max_logit": fold(0.79, 0.0)}) == "energy"


def test_unknown_species_split_is_disjoint_seeded_and_spreads_the_dangerous_ones():
    names = [f"s{i}" for i in range(30)]
    dangerous = [i < 4 for i in range(30)]
    val, test = openset.split_unknown_species(names, dangerous, 0.5, seed=42)
    assert not set(val) & set(test) and set(val) | set(test) == set(names) and len(val) == 15
    assert (val, test) == openset.split_unknown_species(names, dangerous, 0.5, seed=42)
    assert sum(n in val for n in names[:4]) == 2            # the poisonous ones on both sides
    assert openset.split_unknown_species(["a", "b"], [False, False], 0.9, 0) [1]   # both sides non-empty
    assert openset.split_unknown_species(["a"], [True], 0.5, 0) == ([], ["a"])


def test_fusion_of_one_photo_changes_nothing_and_sum_is_n_times_as_sure():
    z = np.array([[2.0, 0.0, -1.0]])
    for how in openset.FUSIONS:
        np.testing.assert_allclose(openset.fuse({"logits": z}, how)["logits"], z)
    three = np.array([[2.0, 0.0, -1.0], [1.0, 0.5, 0.0], [3.0, -1.0, 0.0]])
    mean = openset.probabilities(openset.fuse({"logits": three}, "mean"), 1.5)[0]
    geometric = np.exp(np.log(openset.probabilities({"logits": three}, 1.5)).mean(0))
    np.testing.assert_allclose(mean, geometric / geometric.sum())
    summed = openset.probabilities(openset.fuse({"logits": three}, "sum"), 1.5)[0]
    product = openset.probabilities({"logits": three}, 1.5).prod(0)
    np.testing.assert_allclose(summed, product / product.sum())


def test_find_score_is_the_mean_of_the_photo_scores():
    z = np.array([[4.0, 0.0], [0.0, 0.0]])
    per_photo = openset.unknown_scores({"logits": z}, 1.0)["msp"]
    assert openset.find_score({"logits": z}, 1.0, None, "msp") == pytest.approx(per_photo.mean())


def test_threshold_flags_at_least_the_target_share():
    s = np.arange(100.0)
    t = openset.fit_threshold(s, 0.95)
    assert t == 4.5 and np.mean(s >= t) == 0.95
    # halfway between photos, so a score recomputed with rounding error stays on its side
    assert np.mean(s + 1e-9 >= t) == np.mean(s - 1e-9 >= t) == 0.95
    assert openset.fit_threshold([2.0, 2.0, 3.0], 1.0) == pytest.approx(2.0 - 2e-9)
    assert openset.fit_threshold([1.0, 3.0, 3.0, 3.0], 0.75) == 2.0   # ties flagged together
    with pytest.raises(ValueError, match="no unknown-val photos"):
        openset.fit_threshold([], 0.95)


def test_three_way_partition_spreads_dangerous_species_and_keeps_the_two_way_split_at_zero():
    names = [f"s{i:02d}" for i in range(30)]
    dangerous = [i % 5 == 0 for i in range(30)]           # six dangerous species
    exposure, val, test = openset.partition_unknown_species(names, dangerous, 0.34, 0.5, seed=3)
    assert len(exposure) == 10 and len(val) == 10 and len(test) == 10
    assert set(exposure) | set(val) | set(test) == set(names)
    assert not (set(exposure) & set(val) or set(exposure) & set(test) or set(val) & set(test))
    for part in (exposure, val, test):                     # two dangerous species in each
        assert sum(dangerous[names.index(n)] for n in part) == 2
    assert openset.partition_unknown_species(names, dangerous, 0.0, 0.5, 3) == \
        ([], *openset.split_unknown_species(names, dangerous, 0.5, 3))
    # fit and measure always keep a species each
    assert [len(p) for p in openset.partition_unknown_species(["a", "b", "c"], [0, 0, 1], 0.8, 0.5, 0)] == [1, 1, 1]


def test_relative_mahalanobis_removes_what_every_photo_shares():
    """Photos far from the training photos in a direction every class shares (a brighter camera)
    stay familiar under relative Mahalanobis; a photo off every class's cluster does not."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 20)) * 3
    x = np.concatenate([m + rng.normal(size=(40, 20)) for m in means])
    y = np.repeat(np.arange(3), 40)
    stats = openset.fit_rmd_stats(x, y, 3, dim=10)
    assert stats["rmd_components"].shape == (20, 10) and stats["rmd_means"].shape == (3, 10)
    # the definition, written out: PCA of the L2-normalised embeddings, class minus background distance
    q = np.concatenate([means + rng.normal(size=(3, 20)), rng.normal(size=(3, 20)) * 3])
    xn = q / np.linalg.norm(q, axis=1, keepdims=True)
    z = (xn - stats["rmd_centre"].astype(np.float64)) @ stats["rmd_components"].astype(np.float64)
    w, wb = stats["rmd_whiten"].astype(np.float64), stats["rmd_whiten_bg"].astype(np.float64)
    d = np.stack([(((z - m) @ w) ** 2).sum(1) for m in stats["rmd_means"].astype(np.float64)], 1).min(1)
    bg = (((z - stats["rmd_mean_bg"].astype(np.float64)) @ wb) ** 2).sum(1)
    got = openset.relative_mahalanobis(q, stats)
    np.testing.assert_allclose(got, d - bg, rtol=1e-8, atol=1e-8)
    assert got[:3].max() < got[3:].min()                  # photos of the classes score below the others
    assert "rel_mahalanobis" in openset.unknown_scores({"probs": np.full((1, 3), 1 / 3), "embedding": q[:1]},
                                                      None, stats)
    assert set(openset.stats_for("rel_mahalanobis", stats)) == {k for k in stats if k.startswith("rmd_")}


def test_species_fold_auroc_averages_over_folds_of_species():
    rng = np.random.default_rng(0)
    known = rng.normal(size=50)
    # species a..e: a and b easy to tell from the known photos, the others not
    species = [s for s in "abcde" for _ in range(20)]
    unknown = np.concatenate([rng.normal(size=20) + (3 if s in "ab" else 0) for s in "abcde"])
    cv = openset.species_fold_auroc(unknown, species, known, seed=0, folds=5)
    per_species = [openset.auroc(unknown[np.array(species) == s], known) for s in "abcde"]
    assert sorted(cv["folds"]) == sorted(per_species) and cv["mean"] == pytest.approx(np.mean(per_species))
    assert cv["std"] > 0.1


def test_exposure_photos_shape_the_statistics_but_keep_no_class_mean():
    """With the outlier-exposure photos (others), the PCA, the shared within-class covariance (each
    other species one more class) and the background are fitted on every photo, and the file keeps
    the model's class means only: the same arrays, so predict.py and the page score unchanged."""
    rng = np.random.default_rng(1)
    d, k, shrink = 12, 6, openset.SHRINKAGE
    x = np.concatenate([m + rng.normal(size=(30, d)) for m in rng.normal(size=(2, d)) * 3])
    y = np.repeat(np.arange(2), 30)
    others = np.concatenate([m + rng.normal(size=(20, d)) for m in rng.normal(size=(3, d)) * 3])
    groups = np.repeat(["p", "q", "r"], 20)
    stats = openset.fit_rmd_stats(x, y, 2, dim=k, others=others, other_groups=groups)
    plain = openset.fit_rmd_stats(x, y, 2, dim=k)
    assert {n: v.shape for n, v in stats.items()} == {n: v.shape for n, v in plain.items()}
    assert stats["rmd_means"].shape == (2, k)
    # the definition, written out
    allx = np.concatenate([x, others])
    allx = allx / np.linalg.norm(allx, axis=1, keepdims=True)
    lab = np.concatenate([y, 2 + np.repeat(np.arange(3), 20)])
    centre = allx.mean(0)
    comps = np.linalg.svd(allx - centre, full_matrices=False)[2][:k].T
    z = (allx - centre) @ comps
    means = np.stack([z[lab == c].mean(0) for c in range(5)])
    cov = (z - means[lab]).T @ (z - means[lab]) / (len(z) - 5)
    cov = (1 - shrink) * cov + shrink * np.trace(cov) / k * np.eye(k)
    # components are defined up to sign: compare sign-free quantities
    np.testing.assert_allclose(np.abs(stats["rmd_components"]), np.abs(comps), atol=1e-5)
    signs = np.sign((stats["rmd_components"] * comps).sum(0))
    np.testing.assert_allclose(stats["rmd_means"], means[:2] * signs, atol=1e-5)
    w = stats["rmd_whiten"].astype(np.float64)
    np.testing.assert_allclose(w @ w.T, np.linalg.inv(cov * np.outer(signs, signs)), rtol=1e-4, atol=1e-4)
    q = rng.normal(size=(4, d))
    qz = (q / np.linalg.norm(q, axis=1, keepdims=True) - centre) @ (comps * signs)
    zb = z * signs
    cov_bg = np.cov(zb.T, ddof=1)
    cov_bg = (1 - shrink) * cov_bg + shrink * np.trace(cov_bg) / k * np.eye(k)
    d_class = np.stack([np.einsum("ij,jk,ik->i", qz - m, np.linalg.inv(cov * np.outer(signs, signs)), qz - m)
                        for m in means[:2] * signs], 1).min(1)
    d_bg = np.einsum("ij,jk,ik->i", qz - zb.mean(0), np.linalg.inv(cov_bg), qz - zb.mean(0))
    np.testing.assert_allclose(openset.relative_mahalanobis(q, stats), d_class - d_bg, rtol=1e-4, atol=1e-4)
    assert not np.allclose(openset.relative_mahalanobis(q, stats), openset.relative_mahalanobis(q, plain))
    with pytest.raises(ValueError, match="species for them"):
        openset.fit_rmd_stats(x, y, 2, dim=k, others=others, other_groups=groups[:5])


def test_species_breakdown_per_species_figures():
    rng = np.random.default_rng(0)
    known = rng.normal(0, 1, 60)
    unknown = np.concatenate([rng.normal(0, 1, 12), rng.normal(3, 1, 8), [10.0, 11.0]])
    species = ["B"] * 12 + ["A"] * 8 + ["C"] * 2
    taken = ["x"] * 9 + ["y"] * 3 + ["y"] * 8 + ["x", "z"]
    verdicts = ["edible", "edible"] + ["unknown"] * 20
    rows = openset.species_breakdown(known, unknown, species, 2.0, taken, verdicts)
    by = {r["species"]: r for r in rows}
    names = np.array(species)
    for name in "ABC":
        mine = names == name
        assert by[name]["photos"] == mine.sum()
        assert by[name]["auroc"] == openset.auroc(unknown[mine], known)
        assert by[name]["flagged"] == np.mean(unknown[mine] >= 2.0)
    assert (by["B"]["taken_for"], by["B"]["taken_for_share"], by["B"]["edible"]) == ("x", 0.75, 2)
    assert (by["A"]["taken_for"], by["A"]["edible"]) == ("y", 0)
    assert by["C"]["auroc"] == 1.0 and by["C"]["flagged"] == 1.0
    assert [r["species"] for r in rows] == ["B", "A", "C"]          # the hardest first
    assert "edible" not in openset.species_breakdown(known, unknown, species, 2.0, taken)[0]
    with pytest.raises(ValueError, match="one species"):
        openset.species_breakdown(known, unknown, species[:-1], 2.0, taken)


@pytest.mark.parametrize("seed", [0, 1, 2, 42])
def test_exposure_fraction_moves_species_between_exposure_and_fit_only(seed):
    # benchmarks/open_set_exposure.py compares 5, 10 and 15 exposure species on the same measured
    # species: one seeded ranking, exposure from its front, measure from its end
    names = [f"species {i:02d}" for i in range(30)]
    dangerous = [i % 4 == 0 for i in range(30)]
    parts = [openset.partition_unknown_species(names, dangerous, e, v, seed)
             for e, v in ((0.1667, 0.6), (0.34, 0.5), (0.5, 0.33))]
    assert [tuple(map(len, p)) for p in parts] == [(5, 15, 10), (10, 10, 10), (15, 5, 10)]
    assert parts[0][2] == parts[1][2] == parts[2][2]
    assert set(parts[0][0]) < set(parts[1][0]) < set(parts[2][0])
    for exposure, fit, measure in parts:
        assert set(exposure) | set(fit) | set(measure) == set(names)

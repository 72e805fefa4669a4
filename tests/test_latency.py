"""mushroom.latency: the interleaved timing routine, on tiny real .tflite files (no speed ratio is
asserted: timing belongs in benchmarks/, behaviour here)."""
import numpy as np
import pytest

from mushroom import latency
from mushroom.latency import CallTarget, TFLiteTarget, Timings, interleaved, metrics_keys, rotation, time_files


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A small conv net (16 px) converted to float32 and PTQ int8, with three outputs like every
    exported file (probs, logits, pooled embedding), and the Keras model."""
    from mushroom.keras_env import keras
    from mushroom.quantization import convert

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    pool = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    logits = keras.layers.Dense(4, name="head_logits")(pool)
    probs = keras.layers.Activation("softmax", name="head_probs")(logits)
    model = keras.Model(inputs, probs)
    reps = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
    root = tmp_path_factory.mktemp("latency")
    files = {}
    for fmt in ("float32", "ptq_int8"):
        files[fmt] = root / f"{fmt}.tflite"
        files[fmt].write_bytes(convert(model, fmt, reps if fmt == "ptq_int8" else None))
    return model, files


@pytest.fixture
def image():
    return np.random.default_rng(1).integers(0, 256, (16, 16, 3)).astype(np.uint8)


class Recorder:
    """A target that logs every call: which format, which measure, in which order."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def set_input(self, image):
        self.log.append((self.name, "set"))

    def invoke(self):
        self.log.append((self.name, "invoke"))

    def end_to_end(self, image):
        self.log.append((self.name, "latency"))


def test_rotation_gives_each_format_the_lead_in_turn():
    names = ["a", "b", "c"]
    assert [rotation(names, r) for r in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
                                                       ["a", "b", "c"]]
    assert rotation([], 3) == []


def test_every_format_is_timed_once_per_round_in_rotating_order(image):
    log = []
    targets = {n: Recorder(n, log) for n in ("float32", "ptq_int8", "qat_int8")}
    t = interleaved(targets, image, rounds=5, warmup=2, threads=1)
    calls = [c for c in log if c[1] != "set"]
    # 7 rounds (2 warm-up) x 3 formats x (end to end, then invoke on the input it set)
    assert len(calls) == 7 * 3 * 2
    per_round = [calls[i:i + 6] for i in range(0, len(calls), 6)]
    for r, rnd in enumerate(per_round):
        order = rotation(list(targets), r)
        assert rnd == [(n, m) for n in order for m in ("latency", "invoke")]
    assert t.orders == [rotation(list(targets), r) for r in range(2, 7)]
    for fmt in targets:
        assert [len(t.times[fmt][m]) for m in latency.MEASURES] == [5, 5]
        assert all(v >= 0 for m in latency.MEASURES for v in t.times[fmt][m])
    with pytest.raises(ValueError):
        interleaved(targets, image, rounds=0, warmup=0, threads=1)


def test_summary_ratios_and_paired_ratios_follow_the_recorded_times():
    t = Timings(threads=1, rounds=4, warmup=0, times={
        "float32": {"invoke": [2.0, 4.0, 2.0, 4.0], "latency": [3.0, 5.0, 3.0, 5.0]},
        "qat_int8": {"invoke": [1.0, 1.0, 3.0, 3.0], "latency": [1.5, 2.5, 1.5, 2.5]}})
    s = t.summary("qat_int8")
    assert s["invoke_ms_median"] == 2.0 and s["latency_ms_median"] == 2.0
    assert s["invoke_ratio_float32"] == pytest.approx(2.0 / 3.0)
    # per round 0.5, 0.25, 1.5, 0.75 -> median 0.625 (a ratio of medians would say 0.667)
    assert s["invoke_ratio_float32_paired"] == pytest.approx(0.625)
    assert s["latency_ratio_float32_paired"] == pytest.approx(0.5)
    assert s["invoke_ms_p95"] == pytest.approx(np.percentile([1, 1, 3, 3], 95))
    assert t.summary("float32")["invoke_ratio_float32"] == 1.0
    no_ref = Timings(threads=1, rounds=1, warmup=0, times={"keras": {"invoke": [1.0], "latency": [2.0]}})
    assert no_ref.ratio("keras", "invoke") is None and no_ref.paired_ratio("keras", "invoke") is None
    assert "qat_int8" in t.table() and "–" in no_ref.table()


def test_tflite_files_timed_at_one_thread_and_all_cores(tiny_files, image, monkeypatch):
    monkeypatch.setattr(latency, "all_cores", lambda: 2)
    _, files = tiny_files
    result = time_files(files, image, rounds=6, warmup=1)
    assert sorted(result) == [1, 2]
    for n, t in result.items():
        assert t.threads == n and t.formats == ["float32", "ptq_int8"]
        for fmt in files:
            s = t.summary(fmt)
            assert 0 < s["invoke_ms_median"] <= s["invoke_ms_p95"]
            assert 0 < s["latency_ms_median"] <= s["latency_ms_p95"]
        # end to end does the invoke and more (quantize in, three outputs out): in aggregate it cannot be faster
        total = {m: sum(sum(t.times[f][m]) for f in files) for m in latency.MEASURES}
        assert total["invoke"] < total["latency"]
        assert t.summary("float32")["invoke_ratio_float32"] == 1.0
        assert t.summary("ptq_int8")["invoke_ratio_float32_paired"] > 0


def test_tflite_target_end_to_end_gives_every_output_dequantized(tiny_files, image):
    model, files = tiny_files
    from mushroom.litert import TFLiteModel

    reference = model.predict(image[None].astype(np.float32), verbose=0)
    for fmt, path in files.items():
        target = TFLiteTarget(TFLiteModel(path, num_threads=1))
        out = target.end_to_end(image)
        assert set(out) == {"probs", "logits", "embedding"}
        assert out["probs"].dtype == np.float32 and out["probs"].shape == (1, 4)
        assert out["embedding"].shape == (1, 8)
        np.testing.assert_allclose(out["probs"].sum(), 1.0, atol=0.02)
        np.testing.assert_allclose(out["probs"], reference, atol=1e-5 if fmt == "float32" else 0.05)
        # invoke alone on the input end_to_end set leaves the same raw outputs
        before = target.model._interpreter.get_tensor(target.model._output["index"]).copy()
        target.invoke()
        np.testing.assert_array_equal(target.model._interpreter.get_tensor(target.model._output["index"]), before)


def test_a_traced_keras_call_is_timed_with_the_files(tiny_files, image):
    model, files = tiny_files
    from mushroom.keras_env import tf
    from mushroom.litert import TFLiteModel

    serve = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    keras_target = CallTarget(serve, to_tensor=tf.constant, to_numpy=lambda v: v.numpy())
    keras_target.set_input(image)
    np.testing.assert_allclose(keras_target.end_to_end(image), model.predict(image[None].astype(np.float32), verbose=0),
                               atol=1e-6)
    targets = {"keras": keras_target, **{f: TFLiteTarget(TFLiteModel(p, num_threads=1)) for f, p in files.items()}}
    t = interleaved(targets, image, rounds=4, warmup=1, threads=1)
    assert t.formats == ["keras", "float32", "ptq_int8"] and len(t.orders) == 4
    assert t.summary("keras")["latency_ratio_float32"] > 0


def test_metrics_keys_carry_both_thread_counts_and_none_where_not_timed():
    one = Timings(threads=1, rounds=2, warmup=0, times={
        "keras": {"invoke": [5.0, 5.0], "latency": [6.0, 6.0]},
        "float32": {"invoke": [2.0, 2.0], "latency": [3.0, 3.0]},
        "qat_int8": {"invoke": [1.0, 1.0], "latency": [1.5, 1.5]}})
    cores = Timings(threads=4, rounds=2, warmup=0, times={
        "float32": {"invoke": [1.0, 1.0], "latency": [2.0, 2.0]},
        "qat_int8": {"invoke": [0.8, 0.8], "latency": [1.0, 1.0]}})
    k = metrics_keys("qat_int8", one, cores)
    assert k["latency_ms_median"] == 1.5 and k["invoke_ms_median"] == 1.0
    assert k["invoke_ratio_float32"] == 0.5 and k["latency_ratio_float32"] == 0.5
    assert k["threads_all_cores"] == 4 and k["invoke_ms_median_all_cores"] == 0.8
    assert k["invoke_ratio_float32_all_cores"] == pytest.approx(0.8)
    keras_keys = metrics_keys("keras", one, cores)   # Keras is timed at one thread count only
    assert keras_keys["latency_ms_median"] == 6.0 and keras_keys["invoke_ms_median_all_cores"] is None
    assert metrics_keys("float32", one, None)["latency_ms_median_all_cores"] is None


def test_thread_counts_add_all_cores_once(monkeypatch):
    monkeypatch.setattr(latency, "all_cores", lambda: 4)
    assert latency.thread_counts(1) == [1, 4]
    assert latency.thread_counts(None) == [4] and latency.thread_counts(4) == [4]

"""Tests for the run's output folder (cryoralign_plugin.engine.outputs): checkpoints."""
import os

import numpy as np
import pytest

from cryoralign_plugin.engine.outputs import last_checkpoint, save_checkpoint


def test_checkpoint_round_trip(tmp_path):
    assert last_checkpoint(tmp_path) is None
    assert last_checkpoint(tmp_path / "absent") is None
    arrays = {"params": np.arange(12.0).reshape(3, 4), "classes": np.array([1, 2, 1], dtype=np.int32)}
    path = save_checkpoint(tmp_path, 1, arrays, {"seed": 7, "score": np.float32(0.25)})
    assert os.path.basename(path) == "iter_001"
    save_checkpoint(tmp_path, 2, {"params": arrays["params"] + 1, "classes": arrays["classes"]}, {"seed": 7})
    it, got, meta = last_checkpoint(tmp_path)
    assert it == 2 and meta["seed"] == 7 and meta["iteration"] == 2
    np.testing.assert_array_equal(got["params"], arrays["params"] + 1)
    assert got["classes"].dtype == np.int32
    # saving the same iteration again replaces it
    save_checkpoint(tmp_path, 2, {"params": arrays["params"] * 0}, {"seed": 8})
    it, got, meta = last_checkpoint(tmp_path)
    assert it == 2 and meta["seed"] == 8 and not got["params"].any()
    assert sorted(os.listdir(tmp_path)) == ["iter_001", "iter_002"]


def test_last_checkpoint_ignores_half_written_and_corrupt(tmp_path):
    save_checkpoint(tmp_path, 3, {"x": np.ones(4)}, {"note": "good"})
    # saves killed before their rename: temp directories, one partial, one with complete-looking content
    half = tmp_path / ".iter_004.tmp-abc123"
    half.mkdir()
    (half / "state.npz").write_bytes(b"PK\x03\x04 partial")
    unrenamed = tmp_path / ".iter_007.tmp-def456"
    unrenamed.mkdir()
    np.savez(str(unrenamed / "state.npz"), x=np.zeros(4))
    (unrenamed / "meta.json").write_text('{"iteration": 7, "arrays": ["x"]}')
    # an iter dir whose npz is corrupt, and one with no meta.json
    bad = tmp_path / "iter_005"
    bad.mkdir()
    (bad / "meta.json").write_text('{"iteration": 5, "arrays": ["x"]}')
    (bad / "state.npz").write_bytes(b"garbage")
    nometa = tmp_path / "iter_006"
    nometa.mkdir()
    np.savez(str(nometa / "state.npz"), x=np.zeros(4))
    it, arrays, meta = last_checkpoint(tmp_path)
    assert it == 3 and meta["note"] == "good"
    np.testing.assert_array_equal(arrays["x"], np.ones(4))


def test_save_checkpoint_failure_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 1, {"x": np.ones(2)}, {"bad": object()})
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, 1, {"x": np.array([object()], dtype=object)}, {})
    assert os.listdir(tmp_path) == []
    assert last_checkpoint(tmp_path) is None


def test_particles_star_is_written_without_a_row_object_per_particle(tmp_path, monkeypatch):
    """particles.star of N particles holds ParticleRows.ROWS rows at a time: its rows (read back) are
    each particle's, across the chunks, and writing it allocates far less than a row's ~0.5 KB per
    particle (emtable's rows: 515 MB at 10^6 particles)."""
    import tracemalloc
    from cryoralign_plugin.engine import loop, outputs
    from cryoralign_plugin.engine.sources import ArraySource
    n, k = 20000, 3
    rng = np.random.default_rng(0)
    params = np.column_stack([rng.uniform(0, 360, n), rng.uniform(-3, 3, (n, 2)), rng.integers(0, 2, n)])
    classes, scores = rng.integers(0, k, n), rng.uniform(0, 1, n)
    source = ArraySource(np.zeros((n, 2, 2), np.float32), ids=np.arange(n) + 10)
    averages = np.zeros((k, 2, 2), np.float32)
    result = loop.Result(classes, params, scores, averages, averages, np.full(k, 0.25), [])
    monkeypatch.setattr(outputs.ParticleRows, "ROWS", 1000)
    tracemalloc.start()
    try:
        outputs.write(tmp_path, source, result)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / n < 40   # measured 13 B per particle (the former list of rows: 476)
    back = outputs.read_particles(tmp_path)
    np.testing.assert_array_equal(back.ids, source.ids)
    np.testing.assert_array_equal(back.classes, classes)
    np.testing.assert_allclose(back.params, params, atol=5e-5)
    np.testing.assert_allclose(back.scores, scores, atol=5e-7)

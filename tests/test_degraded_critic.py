"""Degraded critic caches: each corruption does what it says, the same on every run, under its own name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geosapiens.cli.degrade import main
from geosapiens.data.critic_cache import CriticCache
from geosapiens.data.degraded_critic import CriticDegradation
from geosapiens.errors import DataError
from test_critic_cache import build, make_dataset


@pytest.fixture()
def cache(tmp_path):
    root = tmp_path / "data"
    build(make_dataset(root), root, tmp_path / "oracle", stride=2)  # 64x48 crops, 32x24 maps
    return tmp_path / "oracle"


def _entries(cache_dir) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p).astype(np.float32) for p in sorted((cache_dir / "entries").glob("*/*.npy"))}


def test_spec_round_trip_and_bad_items():
    d = CriticDegradation.parse("blur=8, normals=15,depth=0.3,nomask")
    assert d == CriticDegradation(8.0, 15.0, 0.3, True)
    assert CriticDegradation.parse(str(d)) == d
    assert str(CriticDegradation.parse("")) == "none"
    for bad in ("blurr=2", "blur", "normals=-5", "nomask=1", "depth=x"):
        with pytest.raises(ValueError, match="bad item"):
            CriticDegradation.parse(bad)


def test_normal_noise_is_fixed_per_image_and_leaves_the_rest(cache, tmp_path, capsys):
    assert main(["--cache", str(cache), "--out", str(tmp_path / "a"), "--degrade", "normals=15"]) == 0
    assert "5 images" in capsys.readouterr().out
    main(["--cache", str(cache), "--out", str(tmp_path / "b"), "--degrade", "normals=15"])
    main(["--cache", str(cache), "--out", str(tmp_path / "c"), "--degrade", "normals=15", "--seed", "1"])
    src, a, b, c = (_entries(d) for d in (cache, tmp_path / "a", tmp_path / "b", tmp_path / "c"))
    assert a.keys() == src.keys()
    angles = []
    for key, orig in src.items():
        np.testing.assert_array_equal(a[key], b[key])  # the same image errs the same way on every run
        assert not np.array_equal(a[key][1:4], c[key][1:4])  # another seed, another error
        for ch in (0, 4, 5):  # depth, silhouette and body distance untouched
            np.testing.assert_array_equal(a[key][ch], orig[ch])
        body = orig[4] > 0.5
        n = a[key][1:4][:, body]
        np.testing.assert_allclose(np.linalg.norm(n, axis=0), 1.0, atol=2e-3)
        cos = (n * orig[1:4][:, body]).sum(0) / np.linalg.norm(orig[1:4][:, body], axis=0)
        angles.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    median = float(np.median(np.concatenate(angles)))
    assert 8.0 < median < 20.0, median

    degraded = CriticCache(tmp_path / "a")
    assert "oracle degraded (normals=15, seed 0)" in repr(degraded)
    assert degraded.input_size == (64, 48) and degraded.map_size == (32, 24)
    with pytest.raises(DataError, match="not oracle"):  # never mistaken for the critic it came from
        CriticCache(tmp_path / "a", expected_critic="oracle")
    assert degraded.manifest["critic"]["of"] == CriticCache(cache).manifest["critic"]


def test_blur_is_in_crop_pixels_and_keeps_depth_an_average_over_the_body(cache, tmp_path):
    src = _entries(cache)
    small, large = tmp_path / "b1", tmp_path / "b4"
    main(["--cache", str(cache), "--out", str(small), "--degrade", "blur=2"])  # 1 map px at stride 2
    main(["--cache", str(cache), "--out", str(large), "--degrade", "blur=8"])
    changed = {}
    for name in (small, large):
        out = _entries(name)
        changed[name] = 0.0
        for key, orig in src.items():
            body, new_body = orig[4] > 0.5, out[key][4] > 0.5
            depth = out[key][0][new_body]
            assert depth.min() >= orig[0][body].min() - 1e-2 and depth.max() <= orig[0][body].max() + 1e-2
            assert np.all(out[key][5][new_body] == 0) and np.all(out[key][5][~new_body] > 0)
            changed[name] += np.abs(out[key][0] - orig[0]).mean()
    assert 0 < changed[small] < changed[large]


def test_no_mask_removes_the_silhouette_only(cache, tmp_path):
    main(["--cache", str(cache), "--out", str(tmp_path / "n"), "--degrade", "nomask"])
    src, out = _entries(cache), _entries(tmp_path / "n")
    for key, orig in src.items():
        assert np.all(out[key][4] == 1) and np.all(out[key][5] == 0)
        np.testing.assert_array_equal(out[key][0], orig[0])
        np.testing.assert_allclose(out[key][1:4], orig[1:4], atol=1e-3)


def test_errors_name_the_file(cache, tmp_path, capsys):
    main(["--cache", str(cache), "--out", str(tmp_path / "d"), "--degrade", "blur=2"])
    assert main(["--cache", str(cache), "--out", str(tmp_path / "d"), "--degrade", "blur=2"]) == 1
    assert f"{tmp_path / 'd'}: already holds a critic cache" in capsys.readouterr().err
    assert main(["--cache", str(tmp_path / "nope"), "--out", str(tmp_path / "e"), "--degrade", "blur=2"]) == 1
    assert "not a critic cache" in capsys.readouterr().err
    assert main(["--cache", str(cache), "--out", str(tmp_path / "f"), "--degrade", "blurry"]) == 1
    assert "bad item 'blurry'" in capsys.readouterr().err


def test_the_protocols_critic_sweep_rows_differ_from_geo_sapiens_by_their_cache_alone():
    from geosapiens.cli.demo import CRITIC_SWEEP, plan

    p = plan(Path("runs/protocol"), Path("demo_data"), protocol="full", critic_sweep=True)
    uda = next(r for r in p.runs if r.name == "uda")
    sweep = [r for r in p.runs if r.name in {f"uda_{n}" for n in CRITIC_SWEEP}]
    assert [r.name for r in sweep] == [f"uda_{n}" for n in CRITIC_SWEEP]
    for run, (name, spec) in zip(sweep, CRITIC_SWEEP.items(), strict=True):
        CriticDegradation.parse(spec)
        assert run.method == f"Geo-Sapiens (oracle maps, {spec})"  # against SHIFT-style, as every Geo row
        args, base = p.run_args(run, 1), p.run_args(uda, 1)
        cache = "--data.init_args.target.init_args.critic_cache="
        assert f"{cache}{p.degraded_cache(name)}" in args and f"{cache}{p.cache}" in base
        assert [a for a in args if not a.startswith(cache)] == [a for a in base if not a.startswith(cache)]
    plain = plan(Path("runs/protocol"), Path("demo_data"), protocol="full")
    assert not any(r.name in {f"uda_{n}" for n in CRITIC_SWEEP} for r in plain.runs)

"""Von Mises-Fisher normal priors: recovery of known parameters from scipy samples, degenerate inputs, and the
file format (round trip, schema, critic identity)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import vonmises_fisher

from geosapiens.errors import DataError
from geosapiens.losses.functional import normal_prior_loss
from geosapiens.models.normal_prior import (
    MAX_KAPPA,
    NormalPriors,
    fit_keypoint_normal_priors,
    fit_von_mises_fisher,
    load_normal_priors,
    save_normal_priors,
)


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(unit(a), unit(b)), -1.0, 1.0))))


@pytest.mark.parametrize("kappa", [2.0, 10.0, 60.0])
def test_vmf_fit_recovers_mean_and_concentration(kappa):
    mu = unit([0.3, -0.5, -0.8])
    samples = vonmises_fisher(mu, kappa).rvs(20_000, random_state=np.random.default_rng(0))
    mean, k = fit_von_mises_fisher(samples)
    assert angle_deg(mean, mu) < 1.5
    # Banerjee's closed form is itself biased (+3.7% at kappa 10): compare with its value at the population
    # mean resultant length A_3(kappa) = coth(kappa) - 1/kappa, and with kappa itself more loosely.
    r = 1.0 / np.tanh(kappa) - 1.0 / kappa
    assert k == pytest.approx(r * (3 - r**2) / (1 - r**2), rel=0.02)
    assert k == pytest.approx(kappa, rel=0.06)
    # the same from torch, with unnormalised input lengths (directions are what count)
    scaled = torch.from_numpy(samples * np.random.default_rng(1).uniform(0.5, 2.0, (len(samples), 1)))
    mean_t, k_t = fit_von_mises_fisher(scaled)
    assert np.allclose(mean_t, mean, atol=1e-6) and k_t == pytest.approx(k, rel=1e-6)


def test_vmf_fit_degenerate_inputs_and_weights():
    assert fit_von_mises_fisher(np.zeros((0, 3)))[1] == 0.0
    assert fit_von_mises_fisher(np.zeros((5, 3)))[1] == 0.0  # zero-length normals (background)
    mean, k = fit_von_mises_fisher(np.array([[0, 0, -1.0]] * 4))
    assert np.allclose(mean, [0, 0, -1]) and k == MAX_KAPPA
    assert fit_von_mises_fisher(np.array([[1.0, 0, 0], [-1.0, 0, 0]]))[1] == 0.0  # no preferred direction
    x = np.array([[1.0, 0, 0], [0, 1.0, 0], [np.nan, 0, 0]])
    m_nan, _ = fit_von_mises_fisher(x)
    assert angle_deg(m_nan, [1, 1, 0]) < 1e-3  # the NaN row is ignored
    # weight 2 == the sample twice
    dup = fit_von_mises_fisher(np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]]))
    weighted = fit_von_mises_fisher(np.array([[1.0, 0, 0], [0, 1.0, 0]]), weights=np.array([2.0, 1.0]))
    assert np.allclose(dup[0], weighted[0]) and dup[1] == pytest.approx(weighted[1])
    # r = sqrt(5)/3 for that set: kappa = r (3 - r^2) / (1 - r^2)
    r = np.sqrt(5.0) / 3.0
    assert dup[1] == pytest.approx(r * (3 - r**2) / (1 - r**2))


def test_fit_keypoint_priors_per_joint_with_validity():
    rng = np.random.default_rng(2)
    N, K = 400, 3
    truth = [(unit([0, 0, -1]), 40.0), (unit([1, 0, -1]), 8.0), (unit([0, 1, 0]), 20.0)]
    normals = np.stack([vonmises_fisher(m, k).rvs(N, random_state=rng) for m, k in truth], 1)
    valid = np.ones((N, K), bool)
    valid[:, 1] = rng.random(N) < 0.5
    normals[~valid] = np.array([5.0, 5.0, 5.0])  # invalid entries hold garbage that must be ignored
    valid[5:, 2] = False  # joint 2: only 5 samples, below min_count
    priors = fit_keypoint_normal_priors(
        normals,
        torch.from_numpy(valid),
        min_count=10,
        critic="sapiens_0.3b-depth",
        keypoints=("chest", "elbow", "wrist"),
    )
    assert priors.count.tolist() == [N, int(valid[:, 1].sum()), 5]
    assert angle_deg(priors.mean[0], truth[0][0]) < 2 and priors.kappa[0] == pytest.approx(40.0, rel=0.15)
    assert angle_deg(priors.mean[1], truth[1][0]) < 4 and priors.kappa[1] == pytest.approx(8.0, rel=0.2)
    assert priors.kappa[2] == 0.0
    with pytest.raises(ValueError, match="N, K, 3"):
        fit_keypoint_normal_priors(normals[..., :2], valid)


def test_priors_file_round_trip_and_checks(tmp_path):
    rng = np.random.default_rng(3)
    mean = np.stack([unit(v) for v in rng.normal(size=(17, 3))]).astype(np.float32)
    kappa = rng.uniform(1, 30, 17).astype(np.float32)
    kappa[3] = 0.0
    priors = NormalPriors(
        mean, kappa, np.arange(17) * 10, critic="oracle:rendered", extra={"dataset": "demo"}
    )
    path = tmp_path / "normal_priors.json"
    save_normal_priors(path, priors)
    doc = json.loads(path.read_text())
    assert doc["format"] == "geosapiens.models.normal_prior" and doc["schema_version"] == 1
    back = load_normal_priors(path, critic="oracle:rendered")
    assert np.array_equal(back.mean, priors.mean) and np.array_equal(back.kappa, priors.kappa)
    assert back.count.tolist() == priors.count.tolist() and back.extra == {"dataset": "demo"}
    assert back.keypoints[0] == "nose" and back.critic == "oracle:rendered"
    m, k = back.tensors()
    assert m.shape == (17, 3) and k.dtype == torch.float32
    uv = torch.full((1, 17, 2), 0.5)
    maps = m[0].view(1, 3, 1, 1).expand(1, 3, 8, 8)  # every pixel carries joint 0's prior normal
    assert normal_prior_loss(uv, maps, m, k).item() >= 0.0

    with pytest.raises(DataError, match="critic"):
        load_normal_priors(path, critic="sapiens_1b-normal")
    for bad, match in [
        ({**doc, "schema_version": 2}, "schema_version"),
        ({**doc, "format": "x"}, "not a normal"),
        ({**doc, "kappa": doc["kappa"][:5]}, "malformed"),
        ({**doc, "kappa": [-1.0] * 17}, "kappa"),
        ({**doc, "mean": [[2.0, 0, 0]] * 17}, "unit"),
    ]:
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(DataError, match=match) as err:
            load_normal_priors(tmp_path / "bad.json")
        assert "bad.json" in str(err.value)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(DataError, match="JSON"):
        load_normal_priors(tmp_path / "junk.json")
    with pytest.raises(DataError, match="not found"):
        load_normal_priors(tmp_path / "missing.json")

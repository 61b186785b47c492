"""Every shipped config parses (alone or stacked on the config it overlays) and resolves its classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from geosapiens.cli.main import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STACKS = [
    ["warmup.yaml"],
    ["uda.yaml"],
    ["fewshot.yaml"],
    ["distill.yaml"],
    ["warmup.yaml", "oracle.yaml"],
    *[["uda.yaml", f"baselines/{n}"] for n in ("source_only.yaml", "shift_style.yaml", "fidip.yaml")],
    ["baselines/zero_shot_sapiens.yaml"],
    *[["uda.yaml", f"ablations/{p.name}"] for p in sorted((CONFIGS / "ablations").glob("*.yaml"))],
    *[
        [f"demo/{p.name}"]
        for p in sorted((CONFIGS / "demo").glob("*.yaml"))
        if p.name not in ("pose_vae.yaml", "fidip.yaml")
    ],
    ["demo/uda.yaml", "demo/fidip.yaml"],
    ["priors/pose_vae.yaml", "demo/pose_vae.yaml"],
    ["critics/small_critic.yaml"],
]


@pytest.mark.parametrize("stack", STACKS, ids=lambda s: "+".join(s))
def test_config_parses(stack, capsys):
    args = ["fit"] + [a for name in stack for a in ("--config", str(CONFIGS / name))] + ["--print_config"]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: geosapiens." in printed


def test_unknown_key_is_refused_with_its_name(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(CONFIGS / "uda.yaml"), "--model.init_args.not_a_knob", "1"])
    assert done.value.code != 0
    assert "not_a_knob" in capsys.readouterr().err


OVERLAYS = [
    *[("uda.yaml", f"ablations/{p.name}") for p in sorted((CONFIGS / "ablations").glob("*.yaml"))],
    *[("uda.yaml", f"baselines/{n}") for n in ("source_only.yaml", "shift_style.yaml")],
    *[("demo/uda.yaml", f"demo/{n}") for n in ("shift_style.yaml", "mean_teacher.yaml")],
]


def _loss_terms(stack: list[str], capsys) -> dict[str, dict]:
    args = ["fit"] + [a for name in stack for a in ("--config", str(CONFIGS / name))] + ["--print_config"]
    with pytest.raises(SystemExit):
        main(args)
    return yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["loss_terms"]


@pytest.mark.slow
@pytest.mark.parametrize("base, overlay", OVERLAYS, ids=lambda s: s)
def test_an_overlay_keeps_every_term_of_its_base(base, overlay, capsys):
    """A stacked config replaces the whole ``loss_terms`` mapping (jsonargparse merges no dicts): an overlay
    that names one term would silently run every other term at the plan's default weight and epoch."""
    before, after = _loss_terms([base], capsys), _loss_terms([base, overlay], capsys)
    model = yaml.safe_load((CONFIGS / overlay).read_text()).get("model") or {}
    named = (model.get("init_args") or {}).get("loss_terms") or {}
    for term, value in before.items():
        assert term in after, f"{overlay} drops {term} of {base}"
        if term not in named or "start_epoch" not in named[term]:
            assert after[term]["start_epoch"] == value["start_epoch"], f"{overlay}: {term} starts elsewhere"
        if term not in named:
            assert after[term]["weight"] == value["weight"], f"{overlay}: {term} changes weight"

"""Every shipped config parses (alone or stacked on the config it overlays) and resolves its classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from geosapiens.cli import main

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
        if p.name not in ("pose_vae.yaml", "fidip.yaml", "geo_pose.yaml")
    ],
    ["demo/uda.yaml", "demo/fidip.yaml"],
    ["demo/uda.yaml", "demo/geo_pose.yaml"],
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

"""viz: skeleton pixels where joints and limbs are, exact colour maps, normalisation round trip, sheets."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from geosapiens.skeleton import COCO17
from geosapiens.viz import draw, plots

L, R, C = draw.LEFT_COLOR, draw.RIGHT_COLOR, draw.CENTER_COLOR

# A spread-out infant-like COCO-17 pose in a 200 x 160 image (x, y), off the pixel grid on purpose.
POSE = (
    np.array(
        [
            [80, 20],
            [70, 14],
            [90, 14],
            [58, 20],
            [102, 20],
            [58, 60],
            [102, 60],
            [48, 90],
            [112, 90],
            [44, 122],
            [116, 122],
            [66, 120],
            [94, 120],
            [62, 152],
            [98, 152],
            [60, 186],
            [100, 186],
        ],
        dtype=np.float64,
    )
    + 0.3
)
JOINT_COLORS = [C] + [L, R] * 8
LIMB_COLORS = {
    (15, 13): L, (13, 11): L, (16, 14): R, (14, 12): R, (11, 12): C, (5, 11): L, (6, 12): R, (5, 6): C,
    (5, 7): L, (6, 8): R, (7, 9): L, (8, 10): R, (1, 2): C, (0, 1): L, (0, 2): R, (1, 3): L, (2, 4): R,
    (3, 5): L, (4, 6): R,
}  # fmt: skip


def _px(image: np.ndarray, xy: np.ndarray) -> tuple[int, ...]:
    x, y = np.round(xy).astype(int)
    return tuple(int(v) for v in image[y, x])


def test_draw_skeleton_puts_joint_and_limb_colours_in_place():
    image = np.full((200, 160, 3), 7, np.uint8)
    out = draw.draw_skeleton(image, POSE, thickness=3, radius=3)
    assert (image == 7).all(), "the input must not be modified"
    for j in range(17):
        assert _px(out, POSE[j]) == JOINT_COLORS[j], COCO17.names[j]
    assert set(LIMB_COLORS) == set(COCO17.limbs)
    for (a, b), color in LIMB_COLORS.items():
        assert _px(out, (POSE[a] + POSE[b]) / 2) == color, (COCO17.names[a], COCO17.names[b])
    assert _px(out, np.array([150.0, 190.0])) == (7, 7, 7)  # far from the body
    assert 0.05 < (out != 7).any(axis=-1).mean() < 0.3


def test_draw_skeleton_hides_low_scores_masked_and_nan_joints():
    image = np.zeros((200, 160, 3), np.uint8)
    scores = np.full(17, 0.9)
    scores[9] = 0.1  # left wrist below threshold
    kp = POSE.copy()
    kp[10] = np.nan  # right wrist missing
    out = draw.draw_skeleton(image, torch.from_numpy(kp), torch.from_numpy(scores), threshold=0.3)
    for j, limb in ((9, (7, 9)), (10, (8, 10))):
        assert _px(out, POSE[j]) == (0, 0, 0)
        assert _px(out, (POSE[limb[0]] + POSE[limb[1]]) / 2) == (0, 0, 0)
    assert _px(out, POSE[7]) == L and _px(out, POSE[8]) == R  # elbows still drawn
    mask = np.zeros(17, bool)
    mask[[5, 7]] = True
    only_arm = draw.draw_skeleton(image, POSE, mask)
    assert _px(only_arm, (POSE[5] + POSE[7]) / 2) == L
    assert _px(only_arm, POSE[6]) == (0, 0, 0)
    assert (only_arm.any(axis=-1)).sum() < (draw.draw_skeleton(image, POSE).any(axis=-1)).sum() / 4


def test_draw_skeleton_alpha_and_custom_colours():
    image = np.full((200, 160, 3), 100, np.uint8)
    out = draw.draw_skeleton(image, POSE, alpha=0.5, colors={"left": (200, 0, 0)})
    assert _px(out, POSE[5]) == (150, 50, 50)  # 0.5 * (200, 0, 0) + 0.5 * 100
    assert _px(out, POSE[6]) == tuple(round(0.5 * c + 50) for c in R)
    assert _px(out, np.array([150.0, 190.0])) == (100, 100, 100)


def test_draw_skeleton_rejects_bad_shapes():
    with pytest.raises(ValueError, match="K = 17"):
        draw.draw_skeleton(np.zeros((10, 10, 3), np.uint8), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="uint8"):
        draw.draw_skeleton(np.zeros((10, 10, 3), np.float32), POSE)


def test_keypoint_sides_of_other_skeletons():
    assert draw.keypoint_sides(["leftThigh", "rightCalf", "spine", "l_eye", "r_ear"]) == (
        "left", "right", "center", "left", "right",
    )  # fmt: skip


def test_depth_to_rgb_maps_near_to_red_far_to_blue_and_masks_black():
    depth = np.tile(np.linspace(1.0, 2.0, 11), (3, 1))  # left near, right far
    mask = np.ones_like(depth, bool)
    mask[2, 5] = False
    out = draw.depth_to_rgb(depth, mask)
    turbo = cv2.cvtColor(
        cv2.applyColorMap(np.arange(256, dtype=np.uint8)[None], cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB
    )[0]
    assert tuple(out[0, 0]) == tuple(turbo[255]) and tuple(out[0, -1]) == tuple(turbo[0])
    assert tuple(out[0, 5]) == tuple(turbo[128])  # 1.5 is mid-range: round(0.5 * 255) = 128
    assert tuple(out[2, 5]) == (0, 0, 0)
    assert out[0, 0, 0] > out[0, 0, 2] and out[0, -1, 2] > out[0, -1, 0]  # red near, blue far
    fixed = draw.depth_to_rgb(torch.from_numpy(depth)[None], vmin=0.0, vmax=4.0)  # (1, H, W) tensor
    assert tuple(fixed[0, 0]) == tuple(turbo[round((1 - 0.25) * 255)])
    assert not draw.depth_to_rgb(np.zeros((4, 4)), np.zeros((4, 4), bool)).any()


def test_normals_to_rgb_is_n_plus_one_over_two():
    n = np.zeros((1, 4, 3))
    n[0, 0] = (1, 0, 0)
    n[0, 1] = (0, -1, 0)
    n[0, 2] = (0, 0, -1)  # facing the camera
    out = draw.normals_to_rgb(n)
    assert out[0].tolist() == [[255, 128, 128], [128, 0, 128], [128, 128, 0], [0, 0, 0]]
    chw = draw.normals_to_rgb(torch.from_numpy(n).permute(2, 0, 1))
    assert (chw == out).all()
    masked = draw.normals_to_rgb(n, np.array([[True, False, True, True]]))
    assert masked[0, 1].tolist() == [0, 0, 0] and masked[0, 0].tolist() == [255, 128, 128]


def test_denormalize_inverts_sapiens_normalisation_exactly():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 6, 5, 3), dtype=np.uint8)
    mean, std = torch.tensor(draw.SAPIENS_MEAN).view(3, 1, 1), torch.tensor(draw.SAPIENS_STD).view(3, 1, 1)
    tensor = (torch.from_numpy(rgb).permute(0, 3, 1, 2).float() - mean) / std
    assert (draw.denormalize_image(tensor) == rgb).all()
    assert (draw.denormalize_image(tensor[1]) == rgb[1]).all()
    with pytest.raises(ValueError):
        draw.denormalize_image(torch.zeros(2, 4, 4))


def test_contact_sheet_layout_and_labels():
    images = [np.full((10 + i, 20, 3), 10 * (i + 1), np.uint8) for i in range(5)]  # heights 10..14
    images[4] = images[4][..., 0]  # grey input is accepted
    sheet = draw.contact_sheet(images, cols=2, pad=2)
    ch, cw = 14, 20
    assert sheet.shape == (3 * (ch + 2) + 2, 2 * (cw + 2) + 2, 3)
    for i in range(5):
        y0, x0 = 2 + (i // 2) * (ch + 2), 2 + (i % 2) * (cw + 2)
        assert (sheet[y0 : y0 + 10 + i, x0 : x0 + cw] == 10 * (i + 1)).all()
    assert (sheet[2 + 2 * (ch + 2) :, 2 + cw + 2 :] == 0).all()  # the empty sixth cell
    labelled = draw.contact_sheet([np.zeros((40, 80, 3), np.uint8)] * 2, cols=1, labels=["a.png", ""])
    assert labelled[2:20, 2:40].max() == 255 and labelled[44:, :].max() == 0
    with pytest.raises(ValueError):
        draw.contact_sheet([], 2)


def test_png_round_trip_and_figures(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    path = draw.save_png(tmp_path / "sub" / "x.png", rgb)
    assert (draw.read_png(path) == rgb).all()
    fig = plots.plot_pck_curves({"a": ([0.0, 0.1, 0.2], [0.0, 0.5, 1.0])})
    img = plots.figure_to_rgb(fig)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.std() > 0
    png = plots.figure_to_png_bytes(plots.plot_per_joint_bars({"a": [0.5] * 17, "b": [np.nan] * 17}))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_draw_on_a_real_syrip_image(syrip_sample, tmp_path):
    import json

    gt = json.loads(
        (syrip_sample / "annotations" / "200R" / "person_keypoints_train_infant.json").read_text()
    )
    ann = gt["annotations"][0]
    img_info = next(i for i in gt["images"] if i["id"] == ann["image_id"])
    image = draw.read_png(syrip_sample / "images" / "train_infant" / img_info["file_name"])  # any format
    assert image.shape == (img_info["height"], img_info["width"], 3)
    kp = np.asarray(ann["keypoints"], np.float64).reshape(17, 3)
    labelled = kp[:, 2] > 0
    out = draw.draw_skeleton(image, kp[:, :2], labelled, thickness=3, radius=5)
    drawn = np.flatnonzero(labelled)
    assert len(drawn) >= 10
    for j in drawn:
        assert _px(out, kp[j, :2]) == JOINT_COLORS[j], COCO17.names[j]
    changed = (out != image).any(axis=-1)
    x, y, w, h = ann["bbox"]
    x0, y0, x1, y1 = max(0, int(x) - 6), max(0, int(y) - 6), int(x + w) + 6, int(y + h) + 6
    assert 0 < changed[y0:y1, x0:x1].sum() == changed.sum()  # the drawing stays on the infant's box


@pytest.mark.slow
def test_drawing_and_the_drawing_callback_need_no_matplotlib(tmp_path):
    """Training and config parsing run where matplotlib is missing (the GPU machine's image); plots say why
    they cannot."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "import lightning.pytorch\n"  # it imports matplotlib itself when installed
        "for name in [m for m in sys.modules if m.split('.')[0] == 'matplotlib']:\n"
        "    del sys.modules[name]\n"
        "sys.modules['matplotlib'] = None\n"  # from here on, import matplotlib -> ImportError
        "import numpy as np\n"
        "import geosapiens.callbacks.visualize\n"
        "from geosapiens.viz import draw, plots\n"
        "out = draw.draw_skeleton(np.zeros((40, 40, 3), np.uint8), np.full((17, 2), 20.0))\n"
        "assert out.any()\n"
        "try:\n"
        "    plots.plot_pck_curves({})\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plots need matplotlib" in done.stdout

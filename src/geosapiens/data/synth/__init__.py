"""Procedural infant generator: exact labels in two visual domains, written in the real dataset formats.

Nothing can be downloaded on the machines we test on, so Geo-Sapiens renders its own small infant data:
an articulated infant (:mod:`.body`), random postures and fidgety motion (:mod:`.motion`), a NumPy ray
caster with MINI-RGBD's pinhole camera (:mod:`.render`), a "synthetic" and a "real-like" look
(:mod:`.styles`), scenes and their labels (:mod:`.scene`), and writers of the real formats (:mod:`.writers`).
Loaders, critics, stages and metrics read the output through the same MINI-RGBD and SyRIP readers as real
data; there is no generator-specific loader.

Command: ``geosapiens data synth --out DIR --preset {tiny,demo,full} --seed S [--workers N] [--preview]``
(:mod:`.cli`; sizes in :mod:`.presets`). The bytes written depend only on the preset and the seed.

Layout of ``DIR``::

    manifest.json                      preset, seed, style of every sequence, conventions
    preview.png                        (--preview) contact sheet: both styles, skeletons, depth, normals
    MINI-RGBD_web/                     MINI-RGBD tree (reference/datasets.md §1), 640x480, 25 fps
        01/ .. NN/                     one sequence each (style per sequence in manifest.json)
            rgb/syn_XXXXX.png
            depth/syn_XXXXX_depth.png  uint16 mm: infant, props and floor
            fg_mask/mask_XXXXX.png     0/255 infant mask
            joints_2Ddep/syn_joints_2Ddep_XXXXX.txt   25 lines "x y depth id" (px, px, mm = 1000 z)
            joints_3D/syn_joints_3D_XXXXX.txt         25 lines "x y z id" (metres, camera frame)
        geosapiens_maps/NN/rgb/syn_XXXXX.npz
    SyRIP/                             SyRIP layout (reference/datasets.md §2.3), COCO-keypoints JSON
        annotations/1000S/person_keypoints_train_infant.json        "synthetic", is_synthetic true,
                                                                     ids 10000+, train1XXXX.jpg
        annotations/200R/person_keypoints_train_infant.json         "real-like" training pool (few-shot /
                                                                     unlabelled use), ids 1.., trainXXXXX.jpg
        annotations/200R_1000S/person_keypoints_train_infant.json   both of the above
        annotations/val_real/person_keypoints_val_infant.json       "real-like" validation (model
                                                                     selection), ids 5000+, valXXXXX.jpg
        annotations/validate100/person_keypoints_validate_infant.json   "real-like" test, ids 0..,
                                                                         test{id}.jpg
        images/train_infant/  images/val_infant/  images/validate_infant/
        geosapiens_maps/images/<set>_infant/<name>.npz

Counts are the preset's (the folder and file names are SyRIP's whatever the counts). In the COCO files
all 17 keypoints come straight from the body (eyes and ears included): v=2 visible, v=1 occluded by the
depth test, v=0 outside the image (x = y = 0); ``bbox`` is the tight box of the infant mask grown to hold
every in-image keypoint, ``area`` = bbox w*h. MINI-RGBD files carry the 25 SMIL joints only (eyes and
ears stay unlabelled through ``geosapiens.skeleton.SMIL25_TO_COCO17``).

Side folder ``geosapiens_maps/`` (API.md): at each dataset root, ``<image path relative to the root>``
with suffix ``.npz``, holding ``depth`` (float32 HxW, mm, 0 off the infant), ``normals`` (float16 HxWx3,
camera frame x right / y down / z forward, unit on the infant, 0 elsewhere) and ``mask`` (uint8, 1 =
infant). The real-format readers ignore the folder except to note ``PoseRecord.maps_path``.
"""

from __future__ import annotations

from geosapiens.data.synth.generate import generate
from geosapiens.data.synth.presets import PRESETS, Preset
from geosapiens.data.synth.scene import RenderedFrame, Scene, render_frame, sample_sequence, sample_still

__all__ = [
    "generate",
    "PRESETS",
    "Preset",
    "RenderedFrame",
    "Scene",
    "render_frame",
    "sample_sequence",
    "sample_still",
]

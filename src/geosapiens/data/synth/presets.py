"""Named sizes of a generated data set: how many stills per SyRIP-style split, how many sequences."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Preset", "PRESETS"]


@dataclass(frozen=True)
class Preset:
    """Counts and sizes of one generated data set.

    Attributes:
        name: preset name on the command line.
        synthetic_train: "synthetic" stills in ``1000S`` (SyRIP-Synth's role).
        real_train: "real-like" stills in ``200R`` (unlabelled/few-shot training pool).
        real_val: "real-like" stills in ``val_real`` (model selection; never the test split).
        real_test: "real-like" stills in ``validate100`` (the test set).
        still_size: (W, H) of stills; the intrinsics are MINI-RGBD's scaled to it.
        sequence_styles: style of each MINI-RGBD sequence ``01``, ``02``, ...
        sequence_frames: frames per sequence (MINI-RGBD sequences are always 640x480, 25 fps).
    """

    name: str
    synthetic_train: int
    real_train: int
    real_val: int
    real_test: int
    still_size: tuple[int, int]
    sequence_styles: tuple[str, ...]
    sequence_frames: int
    description: str = ""

    @property
    def num_stills(self) -> int:
        return self.synthetic_train + self.real_train + self.real_val + self.real_test

    @property
    def num_frames(self) -> int:
        return len(self.sequence_styles) * self.sequence_frames


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "tiny", 12, 8, 4, 6, (320, 240), ("synthetic", "real-like"), 4, "for tests: seconds on one core"
        ),
        Preset(
            "demo",
            2000,
            600,
            150,
            200,
            (320, 240),
            ("synthetic",) * 4 + ("real-like",) * 2,
            50,
            "for the CPU demo: about a minute or two on 2 cores",
        ),
        Preset(
            "full",
            1000,
            200,
            100,
            100,
            (640, 480),
            ("synthetic",) * 10 + ("real-like",) * 2,
            200,
            "SyRIP's split sizes at 640x480 and 12 MINI-RGBD-like sequences",
        ),
    )
}

"""LightningDataModules: one per dataset, plus the source + target composition a UDA stage trains on.

Every knob is a documented default argument, so LightningCLI configs set them (data roots included: configs
point them at one data-root variable). Each DataModule can serve

- labelled training crops (:meth:`PoseDataModule.train_labelled_dataset`; source data, or few-shot real),
- unlabelled weak/strong pairs (:meth:`PoseDataModule.train_pair_dataset`; any dataset can be a target),
- labelled, unaugmented validation and test crops.

Splits never mix: MINI-RGBD splits by sequence (adjacent frames are near-duplicates), SyRIP holds out a
seeded fraction of training images for validation and tests only on the official validate file. Seeded
choices (held-out validation images, few-shot images) are logged, stored in ``hparams`` and in the
DataModule's ``state_dict`` (saved in checkpoints, restored on resume), so a run can be reproduced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import lightning.pytorch as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import CombinedLoader
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader, Dataset, default_collate

from geosapiens.data.augment import PairCollate, Photometric, ViewAugment
from geosapiens.data.critic_cache import CriticCache
from geosapiens.data.datasets import PairDataset, PoseDataset
from geosapiens.data.elastic import ElasticScale
from geosapiens.data.formats.mini_rgbd import read_mini_rgbd
from geosapiens.data.formats.syrip import read_syrip
from geosapiens.data.occlude import CutOcclude
from geosapiens.data.records import PoseRecord
from geosapiens.data.robust import SkipBadSamples
from geosapiens.data.sampling import ResumableLoader
from geosapiens.errors import DataError
from geosapiens.io import expand_path

__all__ = [
    "PoseDataModule",
    "MiniRGBDDataModule",
    "SyRIPSynthDataModule",
    "SyRIPRealDataModule",
    "AdaptationDataModule",
    "split_by_image",
]


def _worker_init(worker_id: int) -> None:
    """Per DataLoader worker: OpenCV runs sequentially (workers are the parallelism; threads would
    oversubscribe), and Lightning's seeding, which mixes the global rank into the worker's torch seed so DDP
    ranks never share an augmentation stream (Lightning adds it itself only to loaders without an init fn).

    ``cv2.setNumThreads(0)``, not 1: with OpenCV's pthreads backend, a forked worker whose parent already
    ran a parallel OpenCV call hangs forever in ``setNumThreads(1)`` (0 and 2+ return; checked on 5.0.0).
    """
    cv2.setNumThreads(0)
    pl_worker_init_function(worker_id)


def data_path(path: str | Path) -> Path:
    """A dataset path from a config, with ``$VARS`` expanded: configs say ``$GEOSAPIENS_DATA/SyRIP`` so a user
    points every config at their downloaded datasets once, with one environment variable."""
    expanded = expand_path(str(path))
    if "$" in expanded:
        raise DataError(
            path,
            "an environment variable in this path is not set: export GEOSAPIENS_DATA=<the folder "
            "holding MINI-RGBD_web/ and SyRIP/> (README, Data)",
        )
    return Path(expanded)


def split_by_image(records: Sequence[PoseRecord], fraction: float, seed: int) -> tuple[list, list, list]:
    """Seeded hold-out of whole images: (kept records, held-out records, held-out image ids sorted).

    Image ids are sorted before the seeded permutation, so the choice depends only on the ids and the seed,
    never on file order. At least one image is held out when ``fraction > 0``.
    """
    ids = sorted({r.image_id for r in records})
    count = min(len(ids), math.ceil(fraction * len(ids))) if fraction > 0 else 0
    chosen = sorted(ids[i] for i in np.random.default_rng(seed).permutation(len(ids))[:count])
    held = set(chosen)
    return [r for r in records if r.image_id not in held], [r for r in records if r.image_id in held], chosen


class PoseDataModule(L.LightningDataModule):
    """Shared loaders and augmentation knobs; subclasses only say which records make each split.

    Args:
        input_size: network input (H, W); the paper configs use 1024 x 1024.
        batch_size: samples (or pairs) per batch.
        num_workers: DataLoader worker processes (each runs OpenCV single-threaded).
        pin_memory: page-locked batches for faster host-to-GPU copies.
        persistent_workers: keep workers alive between epochs (only when ``num_workers > 0``).
        padding: bbox padding factor of the top-down crop.
        scale_range, rotation_deg, rotation_prob, flip_prob, shift_fraction: random view geometry of labelled
            training crops and of the strong view of pairs (:class:`~geosapiens.data.augment.ViewAugment`).
        weak_scale_range, weak_rotation_deg, weak_shift_fraction: the weak (teacher) view's geometry; it
            mirrors with ``flip_prob`` and shares the mirror with the strong view.
        elastic_prob: probability of elastic scale augmentation on labelled training crops (0 disables).
        head_scale, limb_scale: elastic factor ranges (head about the neck, each limb segment).
        occlude_prob: probability of cut-occlude on labelled training crops (0 disables).
        photometric_strength: magnitude of colour/blur/noise/JPEG augmentation on labelled training crops
            and strong views (0 disables); baselines get the same as the method.
        cutmix_prob: per-pair probability of CutMix between the strong views of a target batch.
        cutmix_area: CutMix rectangle area range, as a fraction of the view.
        skip_bad_samples: replace a sample whose files are bad by the next good one, counted and reported at
            the end of the epoch (:class:`~geosapiens.data.robust.BadSampleReport`); off = stop with the
            error naming the file.
        data_seed: seed of the training order and of every augmentation (each sample's randomness is keyed
            by (seed, pass, index): :mod:`geosapiens.data.sampling`); None = the run's ``seed_everything``
            (``geosapiens fit`` fills it in from the config), 0 outside the CLI.
        critic_cache: critic cache of the training images (``geosapiens critics cache``): the unlabelled pairs
            then carry each image's cached maps (``critic_maps``), read by the DataLoader workers. It must
            have been built for this ``input_size`` and ``padding`` (checked when training starts: a
            mismatch would train on misaligned maps). The geometric terms of the stage read them.
    """

    def __init__(
        self,
        input_size: tuple[int, int] = (1024, 1024),
        batch_size: int = 16,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        padding: float = 1.25,
        scale_range: tuple[float, float] = (0.75, 1.25),
        rotation_deg: float = 45.0,
        rotation_prob: float = 0.6,
        flip_prob: float = 0.5,
        shift_fraction: float = 0.1,
        weak_scale_range: tuple[float, float] = (0.9, 1.1),
        weak_rotation_deg: float = 0.0,
        weak_shift_fraction: float = 0.05,
        elastic_prob: float = 0.5,
        head_scale: tuple[float, float] = (1.0, 1.5),
        limb_scale: tuple[float, float] = (0.7, 1.1),
        occlude_prob: float = 0.5,
        photometric_strength: float = 1.0,
        cutmix_prob: float = 0.5,
        cutmix_area: tuple[float, float] = (0.1, 0.3),
        skip_bad_samples: bool = False,
        data_seed: int | None = None,
        critic_cache: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.critic_cache = None if critic_cache is None else data_path(critic_cache)
        self.skip_bad_samples = skip_bad_samples
        self.data_seed = data_seed
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.padding = padding
        self.geometry = ViewAugment(
            tuple(scale_range), rotation_deg, rotation_prob, flip_prob, shift_fraction
        )
        self.weak_geometry = ViewAugment(
            tuple(weak_scale_range),
            weak_rotation_deg,
            1.0 if weak_rotation_deg > 0 else 0.0,
            flip_prob,
            weak_shift_fraction,
        )
        self.elastic = None
        if elastic_prob > 0:
            self.elastic = ElasticScale(elastic_prob, tuple(head_scale), tuple(limb_scale))
        self.occlude = CutOcclude(occlude_prob) if occlude_prob > 0 else None
        self.photometric = Photometric(photometric_strength) if photometric_strength > 0 else None
        self.cutmix_prob = cutmix_prob
        self.cutmix_area = (float(cutmix_area[0]), float(cutmix_area[1]))
        self.train_records: list[PoseRecord] = []
        self.val_records: list[PoseRecord] = []
        self.test_records: list[PoseRecord] = []

    # -- datasets ---------------------------------------------------------------------------------------

    def train_labelled_dataset(self) -> PoseDataset:
        """Augmented labelled crops of the training records."""
        return PoseDataset(
            self.train_records,
            self.input_size,
            self.padding,
            geometry=self.geometry,
            elastic=self.elastic,
            occlude=self.occlude,
            photometric=self.photometric,
        )

    def train_pair_dataset(self) -> PairDataset:
        """Weak/strong pairs of the training records (their labels unused), with their critic maps."""
        return PairDataset(
            self.train_records,
            self.input_size,
            self.padding,
            weak=self.weak_geometry,
            strong=self.geometry,
            photometric=self.photometric,
            critic_cache=self.open_critic_cache(),
        )

    def open_critic_cache(self) -> CriticCache | None:
        """The critic cache, checked against this DataModule's crop (size and padding); None without one."""
        if self.critic_cache is None:
            return None
        return CriticCache(self.critic_cache, input_size=self.input_size, padding=self.padding)

    def eval_dataset(self, records: Sequence[PoseRecord]) -> PoseDataset:
        """Canonical (unaugmented) labelled crops, for validation and test."""
        return PoseDataset(records, self.input_size, self.padding)

    # -- loaders ----------------------------------------------------------------------------------------

    def _loader(self, dataset: Dataset, train: bool, collate_fn: Any = None) -> DataLoader:
        """Training: a :class:`ResumableLoader` (keyed order and augmentation, sharded over DDP ranks, its
        position saved in checkpoints); evaluation: a plain sequential loader."""
        if len(dataset) == 0:
            raise ValueError(f"{type(self).__name__}: an empty {'training' if train else 'evaluation'} split")
        # Bad files raise a DataError naming them (from workers too); opted in, they are replaced and counted.
        dataset = SkipBadSamples(dataset, enabled=self.skip_bad_samples)
        workers = self.num_workers
        options = dict(
            batch_size=self.batch_size,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and workers > 0,
            worker_init_fn=_worker_init if workers > 0 else None,
            collate_fn=collate_fn,
        )
        if not train:  # a private generator: validation mid-training leaves the global RNG where it was
            return DataLoader(
                dataset, sampler=self._eval_sampler(dataset), generator=torch.Generator(), **options
            )
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return ResumableLoader(
            dataset,
            seed=0 if self.data_seed is None else self.data_seed,
            num_replicas=replicas,
            rank=rank,
            drop_last=len(dataset) // replicas > self.batch_size,
            **options,
        )

    def _eval_sampler(self, dataset: Dataset) -> UnrepeatedDistributedSampler | None:
        """Under DDP, each evaluation sample on exactly one rank: Lightning's default sampler pads the split
        with repeats to a multiple of the world size, which the metrics would count twice. Ranks may then run
        one batch more or less, which only DDP tolerates (its evaluation forward has no collective after the
        first one, which every rank runs when each has a sample); FSDP gathers weights in every forward, so
        it keeps Lightning's padded sampler."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1 or len(dataset) < trainer.world_size:
            return None
        if not isinstance(trainer.strategy, DDPStrategy):
            return None
        return UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )

    def labelled_train_loader(self) -> DataLoader:
        return self._loader(self.train_labelled_dataset(), train=True)

    def pair_train_loader(self) -> DataLoader:
        collate = PairCollate(self.cutmix_prob, self.cutmix_area)
        return self._loader(self.train_pair_dataset(), train=True, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self.labelled_train_loader()

    def val_dataloader(self) -> DataLoader | list:
        """The validation loader; ``[]`` (Lightning then skips validation) when the split is empty."""
        if not self.val_records:
            return []
        return self._loader(self.eval_dataset(self.val_records), train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(self.test_records), train=False)

    def predict_dataloader(self) -> DataLoader:
        """Dataset-level ``predict`` runs on the test split (``setup("predict")`` reads it)."""
        return self.test_dataloader()

    def _record_choice(self, key: str, ids: list) -> None:
        """Log a seeded choice and keep it in ``hparams`` and the loggers' hyperparameters."""
        ids = [int(i) if isinstance(i, int | np.integer) else str(i) for i in ids]
        self.hparams[key] = ids
        rank_zero_info(f"{type(self).__name__}: {key} = {ids}")
        trainer = self.trainer
        if trainer is not None:
            for logger in trainer.loggers:
                logger.log_hyperparams({key: ids})


class MiniRGBDDataModule(PoseDataModule):
    """MINI-RGBD (synthetic infant video), split by sequence, never by frame.

    Args:
        root: the dataset root holding the sequence folders ``01`` .. ``12``.
        train_sequences, val_sequences, test_sequences: disjoint sequence ids (default: Ellershaw's split).
        frame_stride: keep every n-th training frame (adjacent frames at 25 fps are near-duplicates).
        val_frame_stride: keep every n-th validation frame (validation speed).
        test_frame_stride: keep every n-th test frame (1 = the full published protocol).
        check_projection: let the reader verify that 3D joints project onto the 2D joints.
        **kwargs: :class:`PoseDataModule` knobs.
    """

    def __init__(
        self,
        root: str | Path,
        train_sequences: Sequence[str] = ("01", "02", "03", "04", "05", "06", "07", "08"),
        val_sequences: Sequence[str] = ("09", "10"),
        test_sequences: Sequence[str] = ("11", "12"),
        frame_stride: int = 1,
        val_frame_stride: int = 10,
        test_frame_stride: int = 1,
        check_projection: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.root = data_path(root)
        self.sequences = {
            "train": [f"{int(s):02d}" for s in train_sequences],
            "val": [f"{int(s):02d}" for s in val_sequences],
            "test": [f"{int(s):02d}" for s in test_sequences],
        }
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = set(self.sequences[a]) & set(self.sequences[b])
            if shared:
                raise ValueError(f"MiniRGBDDataModule: sequences {sorted(shared)} are in both {a} and {b}")
        self.strides = {"train": frame_stride, "val": val_frame_stride, "test": test_frame_stride}
        self.check_projection = check_projection

    def _read(self, split: str) -> list[PoseRecord]:
        if not self.sequences[split]:
            return []
        records = read_mini_rgbd(self.root, self.sequences[split], check_projection=self.check_projection)
        stride = self.strides[split]
        return [r for r in records if r.frame is None or r.frame % stride == 0]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_records = self._read("train")
        if stage in (None, "fit", "validate"):
            self.val_records = self._read("val")
        if stage in (None, "test", "predict"):  # predict runs on the test split
            self.test_records = self._read("test")


class SyRIPSynthDataModule(PoseDataModule):
    """The synthetic images of a SyRIP training file; validation is a seeded hold-out of them (no test split).

    Args:
        root: SyRIP root (``annotations/`` and ``images/``).
        train_file: annotation file holding the synthetic images (``is_synthetic``).
        image_dir: image folder, default ``images/<set>_infant`` from the file name.
        val_fraction: fraction of synthetic images held out for validation.
        split_seed: seed of the hold-out; the chosen ids are recorded as ``val_image_ids``.
        **kwargs: :class:`PoseDataModule` knobs.
    """

    def __init__(
        self,
        root: str | Path,
        train_file: str = "annotations/200R_1000S/person_keypoints_train_infant.json",
        image_dir: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.root = data_path(root)
        self.train_file = train_file
        self.image_dir = image_dir
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.val_image_ids: list = []

    def setup(self, stage: str | None = None) -> None:
        records = read_syrip(self.root, self.train_file, self.image_dir, domain="synthetic")
        if not records:
            raise ValueError(f"SyRIPSynthDataModule: no synthetic images in {self.root / self.train_file}")
        self.train_records, self.val_records, self.val_image_ids = split_by_image(
            records, self.val_fraction, self.split_seed
        )
        self._record_choice("val_image_ids", self.val_image_ids)

    def test_dataloader(self) -> DataLoader:
        raise ValueError("SyRIPSynthDataModule has no test split: test on SyRIPRealDataModule (validate100)")

    def state_dict(self) -> dict[str, Any]:
        return {"val_image_ids": list(self.val_image_ids)}


class SyRIPRealDataModule(PoseDataModule):
    """The real SyRIP images: labelled training, unlabelled target, or few-shot; tested on the validate file.

    Modes (what :meth:`train_dataloader` yields):

    - ``"labelled"``: every real training image, labelled (the oracle).
    - ``"unlabelled"``: weak/strong pairs of the real training images (the UDA target; labels unused).
    - ``"fewshot"``: ``num_shots`` labelled real images, chosen with ``fewshot_seed`` (or given as
      ``fewshot_image_ids``); the choice is logged, kept in ``hparams`` and the ``state_dict``.

    Validation is ``val_file`` when given, else a seeded hold-out (``val_fraction``, ``split_seed``) of the
    training images, removed from every training mode. The test file is never used for training or
    validation (a ``val_file`` equal to it is refused).

    Args:
        root: SyRIP root (``annotations/`` and ``images/``).
        mode: ``"labelled"``, ``"unlabelled"`` or ``"fewshot"``.
        train_file: annotation file of the training images (its real images are used).
        test_file: the official test file (Test100, the clean one; ``reference/datasets.md`` §2.2).
        val_file: a separate validation file, or None for a hold-out of ``train_file``.
        val_fraction, split_seed: the hold-out when ``val_file`` is None.
        num_shots: labelled images in few-shot mode.
        fewshot_seed: seed of the few-shot choice.
        fewshot_image_ids: explicit few-shot image ids (reproduce a run); overrides the seeded choice.
        **kwargs: :class:`PoseDataModule` knobs (elastic augmentation defaults to off: it is for source data).
    """

    def __init__(
        self,
        root: str | Path,
        mode: Literal["labelled", "unlabelled", "fewshot"] = "labelled",
        train_file: str = "annotations/200R/person_keypoints_train_infant.json",
        test_file: str = "annotations/validate100/person_keypoints_validate_infant.json",
        val_file: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        num_shots: int = 10,
        fewshot_seed: int = 0,
        fewshot_image_ids: list[int] | None = None,
        elastic_prob: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(elastic_prob=elastic_prob, **kwargs)
        self.save_hyperparameters()
        if mode not in ("labelled", "unlabelled", "fewshot"):
            raise ValueError(f"SyRIPRealDataModule: mode must be labelled, unlabelled or fewshot: {mode!r}")
        self.root = data_path(root)
        self.mode = mode
        self.train_file, self.test_file, self.val_file = train_file, test_file, val_file
        if val_file is not None and self._resolve(val_file) == self._resolve(test_file):
            raise ValueError(f"SyRIPRealDataModule: val_file is the test file {test_file}; pick another")
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.num_shots, self.fewshot_seed = num_shots, fewshot_seed
        self.fewshot_image_ids: list | None = None if fewshot_image_ids is None else list(fewshot_image_ids)
        self.val_image_ids: list = []
        self.pool_records: list[PoseRecord] = []

    def _resolve(self, file: str | Path) -> Path:
        path = Path(file)
        return (path if path.is_absolute() else self.root / path).resolve()

    def _choose_fewshot(self) -> list[PoseRecord]:
        ids = sorted({r.image_id for r in self.pool_records})
        if self.fewshot_image_ids is None:
            if self.num_shots > len(ids):
                raise ValueError(f"SyRIPRealDataModule: {self.num_shots} shots, {len(ids)} training images")
            picks = np.random.default_rng(self.fewshot_seed).choice(len(ids), self.num_shots, replace=False)
            self.fewshot_image_ids = sorted(ids[i] for i in picks)
        missing = set(self.fewshot_image_ids) - set(ids)
        if missing:
            raise ValueError(
                f"SyRIPRealDataModule: few-shot image ids {sorted(missing)} are not "
                f"training images of {self.train_file} (held out for validation, or absent)"
            )
        self._record_choice("fewshot_image_ids", self.fewshot_image_ids)
        chosen = set(self.fewshot_image_ids)
        return [r for r in self.pool_records if r.image_id in chosen]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate"):
            records = read_syrip(self.root, self.train_file, domain="real")
            if self.val_file is None:
                self.pool_records, self.val_records, self.val_image_ids = split_by_image(
                    records, self.val_fraction, self.split_seed
                )
                self._record_choice("val_image_ids", self.val_image_ids)
            else:
                self.pool_records = records
                self.val_records = read_syrip(self.root, self.val_file, domain="real")
            test_path = self._resolve(self.test_file)
            if test_path.exists():
                test_images = {r.image_path.resolve() for r in read_syrip(self.root, self.test_file)}
                leaked = [
                    r.image_id
                    for r in self.pool_records + self.val_records
                    if r.image_path.resolve() in test_images
                ]
                if leaked:
                    raise ValueError(
                        f"SyRIPRealDataModule: training/validation images {leaked[:10]} are "
                        f"test images of {self.test_file}"
                    )
            self.train_records = self._choose_fewshot() if self.mode == "fewshot" else self.pool_records
        if stage in (None, "test", "predict"):  # predict runs on the test split
            self.test_records = read_syrip(self.root, self.test_file, domain="real")

    def train_dataloader(self) -> DataLoader:
        return self.pair_train_loader() if self.mode == "unlabelled" else self.labelled_train_loader()

    def state_dict(self) -> dict[str, Any]:
        return {"val_image_ids": list(self.val_image_ids), "fewshot_image_ids": self.fewshot_image_ids}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the recorded few-shot choice (a resumed run trains on the same images)."""
        ids = state_dict.get("fewshot_image_ids")
        if self.mode == "fewshot" and ids is not None and ids != self.fewshot_image_ids:
            self.fewshot_image_ids = list(ids)
            if self.pool_records:
                self.train_records = self._choose_fewshot()


def collate_shared_keys(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` over the keys every sample has: MINI-RGBD frames carry ``sequence``/``frame`` (and
    sources differ in ``mask``), so a batch mixing frames and stills would fail with a KeyError."""
    shared = set.intersection(*(set(s) for s in samples))
    return default_collate([{k: v for k, v in s.items() if k in shared} for s in samples])


class MultiSourceDataModule(PoseDataModule):
    """Several labelled sources as one (stage 1 warms up on MINI-RGBD + SyRIP-Synth together).

    The sources only read and split their records; this module's own knobs (input size, augmentation,
    batching) apply to the union, so every source is augmented alike.

    Args:
        sources: labelled DataModules whose train/val records are concatenated.
        **kwargs: :class:`PoseDataModule` knobs.
    """

    def __init__(self, sources: list[PoseDataModule], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["sources"])
        self.sources = sources

    def _loader(self, dataset: Dataset, train: bool, collate_fn: Any = None) -> DataLoader:
        return super()._loader(dataset, train, collate_fn or collate_shared_keys)

    def setup(self, stage: str | None = None) -> None:
        for source in self.sources:
            source.trainer = self.trainer
            source.setup("fit")
        self.train_records = [r for source in self.sources for r in source.train_records]
        self.val_records = [r for source in self.sources for r in source.val_records]

    def state_dict(self) -> dict[str, Any]:
        return {str(i): source.state_dict() for i, source in enumerate(self.sources)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for i, source in enumerate(self.sources):
            source.load_state_dict(state_dict.get(str(i), {}))


class AdaptationDataModule(L.LightningDataModule):
    """Labelled source batches and unlabelled target pairs together, for unsupervised domain adaptation.

    Training yields ``{"source": labelled batch, "target": pair batch}`` through Lightning's
    ``CombinedLoader``; with ``max_size_cycle`` an epoch is as long as the longer loader and the shorter one
    cycles. Validation and test are the target's labelled val/test (model selection on the target's
    validation split, never its test split).

    Args:
        source: a labelled DataModule (e.g. :class:`MiniRGBDDataModule`, :class:`SyRIPSynthDataModule`).
        target: the target DataModule (e.g. :class:`SyRIPRealDataModule`); its pairs are used, whatever its
            mode.
        mode: ``CombinedLoader`` mode.
    """

    def __init__(
        self,
        source: PoseDataModule,
        target: PoseDataModule,
        mode: Literal["max_size_cycle", "max_size", "min_size"] = "max_size_cycle",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["source", "target"])
        self.source, self.target, self.mode = source, target, mode

    def prepare_data(self) -> None:
        self.source.prepare_data()
        self.target.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        for module in (self.source, self.target):
            module.trainer = self.trainer
        if stage in (None, "fit"):
            self.source.setup("fit")
            self.target.open_critic_cache()  # a cache of another crop fails here, before any step
        self.target.setup(stage)

    def train_dataloader(self) -> CombinedLoader:
        loaders = {"source": self.source.labelled_train_loader(), "target": self.target.pair_train_loader()}
        return CombinedLoader(loaders, mode=self.mode)

    def val_dataloader(self) -> DataLoader | list:
        return self.target.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self.target.test_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.target.predict_dataloader()

    def state_dict(self) -> dict[str, Any]:
        return {"source": self.source.state_dict(), "target": self.target.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.source.load_state_dict(state_dict.get("source", {}))
        self.target.load_state_dict(state_dict.get("target", {}))

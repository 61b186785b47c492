"""DataModules: splits that never share sequences or test images, seeded and recorded choices, and the
source + target composition (also through a real Trainer, with its state in the checkpoint)."""

from __future__ import annotations

import json
import pickle
import shutil

import lightning.pytorch as L
import numpy as np
import pytest
import torch

from fixtures_mini_rgbd import write_mini_rgbd
from geosapiens.data.critic_cache import CriticCache, build_cache
from geosapiens.data.datamodules import (
    AdaptationDataModule,
    MiniRGBDDataModule,
    MultiSourceDataModule,
    SyRIPRealDataModule,
    SyRIPSynthDataModule,
)
from geosapiens.data.formats.syrip import read_syrip
from geosapiens.errors import DataError

SMALL = {"input_size": (32, 24), "batch_size": 4, "num_workers": 0, "pin_memory": False}
TRAIN = "annotations/200R_1000S/person_keypoints_train_infant.json"
TEST = "annotations/validate100/person_keypoints_validate_infant.json"


@pytest.fixture(scope="module")
def mini_rgbd(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini_rgbd")
    write_mini_rgbd(root, sequences=[f"{i:02d}" for i in range(1, 13)], frames=range(4), occlude=())
    return root


@pytest.fixture(scope="module")
def syrip(syrip_sample, tmp_path_factory):
    """The sample's 32 real images in a temporary SyRIP tree: even ids relabelled synthetic (a file like
    200R_1000S), and 6 more copies (other files, as the release's test images are) as the validate file."""
    root = tmp_path_factory.mktemp("syrip")
    data = json.loads((syrip_sample / "annotations/200R/person_keypoints_train_infant.json").read_text())
    for image in data["images"]:
        image["is_synthetic"] = image["id"] % 2 == 0
    (root / "annotations/200R_1000S").mkdir(parents=True)
    (root / "annotations/200R_1000S/person_keypoints_train_infant.json").write_text(json.dumps(data))
    (root / "images/train_infant").mkdir(parents=True)
    for image in data["images"]:  # copies: the reader refuses symlinks that leave the dataset root
        shutil.copy(syrip_sample / "images/train_infant" / image["file_name"], root / "images/train_infant")
    test = {"images": [], "annotations": [], "categories": data["categories"]}
    (root / "images/validate_infant").mkdir(parents=True)
    pairs = zip(data["images"][:6], data["annotations"][:6], strict=True)
    for new_id, (image, annotation) in enumerate(pairs):
        name = f"test{new_id}.jpg"
        shutil.copy(syrip_sample / "images/train_infant" / image["file_name"],
                    root / "images/validate_infant" / name)
        test["images"].append({**image, "id": new_id, "file_name": name, "is_synthetic": False})
        test["annotations"].append({**annotation, "id": new_id, "image_id": new_id})
    (root / "annotations/validate100").mkdir(parents=True)
    (root / "annotations/validate100/person_keypoints_validate_infant.json").write_text(json.dumps(test))
    return root


def test_mini_rgbd_splits_by_sequence(mini_rgbd):
    dm = MiniRGBDDataModule(mini_rgbd, **SMALL)
    dm.setup()
    split = {name: {r.sequence for r in getattr(dm, f"{name}_records")} for name in ("train", "val", "test")}
    assert split["train"] == {f"{i:02d}" for i in range(1, 9)}
    assert split["val"] == {"09", "10"} and split["test"] == {"11", "12"}
    assert len(dm.train_records) == 8 * 4 and len(dm.test_records) == 2 * 4
    assert {r.frame for r in dm.val_records} == {0}  # val_frame_stride 10 keeps frame 0 of 0..3
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 24)
    assert batch["weights"][:, 1:5].eq(0).all() and batch["weights"][:, 0].eq(1).all()  # no eyes/ears


def test_mini_rgbd_frame_stride_and_overlap_check(mini_rgbd):
    dm = MiniRGBDDataModule(mini_rgbd, train_sequences=["1", "2"], val_sequences=[3], test_sequences=["04"],
                            frame_stride=2, **SMALL)
    dm.setup("fit")
    assert sorted((r.sequence, r.frame) for r in dm.train_records) == [
        ("01", 0), ("01", 2), ("02", 0), ("02", 2)
    ]
    assert dm.test_records == []  # the test split is only read for testing
    assert dm.val_dataloader() != []
    assert MiniRGBDDataModule(mini_rgbd, val_sequences=[]).val_dataloader() == []  # Lightning skips it
    with pytest.raises(ValueError, match=r"\['08'\] are in both train and test"):
        MiniRGBDDataModule(mini_rgbd, test_sequences=["08", "11"])


def test_synth_validation_is_a_seeded_recorded_hold_out(syrip):
    dm = SyRIPSynthDataModule(syrip, train_file=TRAIN, val_fraction=0.25, split_seed=3, **SMALL)
    dm.setup("fit")
    train_ids = {r.image_id for r in dm.train_records}
    val_ids = {r.image_id for r in dm.val_records}
    assert all(r.domain == "synthetic" for r in dm.train_records + dm.val_records)
    assert len(val_ids) == 5 and len(train_ids) == 12 and not train_ids & val_ids  # 17 synthetic, ceil(17/4)
    assert dm.val_image_ids == sorted(val_ids) == dm.hparams["val_image_ids"]
    assert dm.state_dict()["val_image_ids"] == dm.val_image_ids
    again = SyRIPSynthDataModule(syrip, train_file=TRAIN, val_fraction=0.25, split_seed=3, **SMALL)
    again.setup("fit")
    other = SyRIPSynthDataModule(syrip, train_file=TRAIN, val_fraction=0.25, split_seed=4, **SMALL)
    other.setup("fit")
    assert again.val_image_ids == dm.val_image_ids != other.val_image_ids


def test_real_splits_never_touch_the_test_file(syrip):
    dm = SyRIPRealDataModule(syrip, train_file=TRAIN, test_file=TEST, val_fraction=0.25, **SMALL)
    dm.setup()
    train = {r.image_path for r in dm.train_records}
    val = {r.image_path for r in dm.val_records}
    test = {r.image_path.resolve() for r in dm.test_records}
    assert len(train) == 11 and len(val) == 4 and len(test) == 6 and not train & val  # 15 real, ceil(15/4)
    assert not {p.resolve() for p in train | val} & test
    assert all(r.domain == "real" for r in dm.train_records + dm.val_records)
    with pytest.raises(ValueError, match="val_file is the test file"):
        SyRIPRealDataModule(syrip, val_file=TEST, test_file=TEST)


def test_real_refuses_test_images_in_training(syrip, tmp_path):
    root = tmp_path / "leaky"
    shutil.copytree(syrip, root, symlinks=True)
    test = json.loads((root / TEST).read_text())
    # a "test" image that is a training image under another name
    (root / "images/validate_infant/test0.jpg").unlink()
    train_image = json.loads((root / TRAIN).read_text())["images"][1]["file_name"]
    (root / "images/validate_infant/test0.jpg").symlink_to(root / "images/train_infant" / train_image)
    (root / TEST).write_text(json.dumps(test))
    with pytest.raises(ValueError, match="are test images"):
        SyRIPRealDataModule(root, train_file=TRAIN, test_file=TEST, val_fraction=0.0, **SMALL).setup("fit")


def test_fewshot_choice_is_seeded_recorded_and_restorable(syrip):
    def fewshot(**kwargs):
        dm = SyRIPRealDataModule(syrip, mode="fewshot", train_file=TRAIN, test_file=TEST, num_shots=3,
                                 **{**SMALL, **kwargs})
        dm.setup("fit")
        return dm

    dm = fewshot(fewshot_seed=1)
    chosen = dm.fewshot_image_ids
    assert len(chosen) == 3 and sorted({r.image_id for r in dm.train_records}) == chosen
    assert not set(chosen) & set(dm.val_image_ids)  # never a validation image
    assert dm.hparams["fewshot_image_ids"] == chosen == dm.state_dict()["fewshot_image_ids"]
    assert fewshot(fewshot_seed=1).fewshot_image_ids == chosen
    assert fewshot(fewshot_seed=2).fewshot_image_ids != chosen
    assert [r.image_id for r in fewshot(fewshot_image_ids=chosen[::-1]).train_records] == chosen
    restored = fewshot(fewshot_seed=2)
    restored.load_state_dict(dm.state_dict())
    assert restored.fewshot_image_ids == chosen and [r.image_id for r in restored.train_records] == chosen
    with pytest.raises(ValueError, match="not training images"):
        fewshot(fewshot_image_ids=[dm.val_image_ids[0]])


def test_unlabelled_mode_yields_pairs_from_workers(syrip):
    dm = SyRIPRealDataModule(syrip, mode="unlabelled", train_file=TRAIN, test_file=TEST,
                             **{**SMALL, "num_workers": 2})
    dm.setup("fit")
    for part in (dm.train_labelled_dataset(), dm.train_pair_dataset(), dm.pair_train_loader().collate_fn):
        pickle.loads(pickle.dumps(part))  # spawn-started workers (and ddp_spawn) pickle them
    batch = next(iter(dm.train_dataloader()))
    assert {"weak", "strong", "weak_to_strong", "canonical_affine"} <= batch.keys()
    assert "keypoints" not in batch
    assert "keypoints" in next(iter(dm.val_dataloader()))  # validation stays labelled


def test_adaptation_yields_source_and_target(syrip, mini_rgbd):
    source = MiniRGBDDataModule(mini_rgbd, train_sequences=["01", "02", "03"], val_sequences=["04"],
                                test_sequences=["05"], **SMALL)
    target = SyRIPRealDataModule(syrip, mode="unlabelled", train_file=TRAIN, test_file=TEST,
                                 **{**SMALL, "batch_size": 2})
    dm = AdaptationDataModule(source, target)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    # max_size_cycle: as long as the longer loader (target: 15 real - 2 held out = 13 pairs / 2 -> 6 full
    # batches; source: 12 frames / 4 = 3 batches)
    assert len(batches) == 6
    batch, _, _ = batches[0]
    assert batch["source"]["image"].shape == (4, 3, 32, 24) and "keypoints" in batch["source"]
    assert batch["target"]["weak"].shape == (2, 3, 32, 24) and "weak_to_strong" in batch["target"]
    sources = [b["source"]["index"].tolist() for b, _, _ in batches]
    assert sources[3:] == sources[:3] or len({tuple(s) for s in sources}) > 3  # the short loader cycles
    val = next(iter(dm.val_dataloader()))
    assert val["image_path"][0].endswith(".jpg")  # the target's (SyRIP) labelled validation


def test_multi_source_batches_mix_frames_and_stills(syrip, mini_rgbd):
    """uda.yaml's source: MINI-RGBD frames (with sequence/frame) and SyRIP stills (without) in one batch."""
    frames = MiniRGBDDataModule(mini_rgbd, train_sequences=["01"], val_sequences=["02"], test_sequences=[],
                                val_frame_stride=1, **SMALL)
    stills = SyRIPSynthDataModule(syrip, train_file=TRAIN, **SMALL)
    dm = MultiSourceDataModule([frames, stills], **{**SMALL, "batch_size": 64})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    paths = batch["image_path"]
    assert any(p.endswith(".jpg") for p in paths) and any("/01/" in p for p in paths)  # both sources
    assert batch["image"].shape[0] == len(dm.train_records) and "sequence" not in batch
    val = next(iter(dm.val_dataloader()))  # the union of the sources' validation splits
    assert val["image"].shape[0] == len(dm.val_records) == 4 + len(stills.val_records)


class _TinyStage(L.LightningModule):
    """Touches both halves of an adaptation batch; just enough to run the Trainer."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return (batch["source"]["image"].mean() + batch["target"]["strong"].mean()) * self.weight

    def validation_step(self, batch, batch_idx):
        self.log("val", batch["keypoints"].mean(), batch_size=len(batch["keypoints"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_adaptation_runs_in_a_trainer_and_checkpoints_the_fewshot_choice(syrip, tmp_path):
    source = SyRIPSynthDataModule(syrip, train_file=TRAIN, **SMALL)
    target = SyRIPRealDataModule(syrip, mode="fewshot", num_shots=4, fewshot_seed=5, train_file=TRAIN,
                                 test_file=TEST, **SMALL)
    dm = AdaptationDataModule(source, target)
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(_TinyStage(), datamodule=dm)
    assert trainer.state.finished and trainer.global_step == 2
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["AdaptationDataModule"]
    assert state["target"]["fewshot_image_ids"] == target.fewshot_image_ids
    assert np.array_equal(state["source"]["val_image_ids"], source.val_image_ids)


def test_unlabelled_pairs_carry_their_critic_maps_and_a_misaligned_cache_is_refused(syrip, tmp_path):
    from test_critic_cache import BrightnessCritic

    records = read_syrip(syrip, TRAIN, domain="real")
    cache = tmp_path / "cache"
    identity = {"kind": "brightness", "files": []}
    dataset = {"root": str(syrip), "annotation": TRAIN, "format": "syrip"}
    build_cache(records, BrightnessCritic().freeze(), cache, SMALL["input_size"], identity, dataset,
                progress=False)

    target = SyRIPRealDataModule(syrip, mode="unlabelled", train_file=TRAIN, test_file=TEST,
                                 critic_cache=cache, **{**SMALL, "num_workers": 2})
    AdaptationDataModule(target, target).setup("fit")
    batch = next(iter(target.train_dataloader()))
    maps = batch["critic_maps"]
    assert maps.shape == (4, 6, 8, 6) and maps.dtype == torch.float16  # 32x24 crops at stride 4
    stored = CriticCache(cache)
    for i, path in enumerate(batch["image_path"]):  # read in the workers, exactly as stored
        assert torch.equal(maps[i], stored.read(path))
    assert "critic_lambda_z" not in batch  # a model critic cannot measure millimetres

    mismatches = [
        ({"input_size": (64, 48)}, "32x24 crops, not 64x48"),
        ({"padding": 1.5}, "padding 1.25, not 1.5"),
    ]
    for knob, message in mismatches:
        other = SyRIPRealDataModule(syrip, mode="unlabelled", train_file=TRAIN, test_file=TEST,
                                    critic_cache=cache, **{**SMALL, **knob})
        with pytest.raises(DataError, match=message) as err:
            AdaptationDataModule(other, other).setup("fit")
        assert str(cache) in str(err.value)

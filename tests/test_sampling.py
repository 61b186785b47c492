"""Keyed sampling: a loader's position survives a state_dict round trip, ranks split a pass, and the global
RNG (dropout) resumes where it was."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from geosapiens.callbacks.rng import RestoreRNG
from geosapiens.data.sampling import KeyedSampler, ResumableLoader, SampleKey, key_rng


class Keys(Dataset):
    """Returns (index, pass) of the key it was asked for, and one keyed random number."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, key: SampleKey) -> torch.Tensor:
        index, rng = key_rng(key, stream=0)
        return torch.tensor([index, key.epoch, rng.random()], dtype=torch.float64)


def _passes(loader: ResumableLoader, n: int) -> list[list[torch.Tensor]]:
    return [list(loader) for _ in range(n)]


def test_resumable_loader_continues_mid_pass_and_after_a_finished_pass():
    reference = _passes(ResumableLoader(Keys(), batch_size=3, seed=5), 3)
    assert [len(p) for p in reference] == [4, 4, 4]
    orders = [torch.cat(p)[:, 0] for p in reference]
    assert sorted(orders[0].tolist()) == list(range(10)) and not torch.equal(orders[0], orders[1])

    interrupted = ResumableLoader(Keys(), batch_size=3, seed=5)
    list(interrupted)
    iterator = iter(interrupted)
    taken = [next(iterator), next(iterator)]
    state = interrupted.state_dict()
    assert state == {"pass": 1, "batches": 2, "seed": 5, "num_replicas": 1, "batch_size": 3}
    resumed = ResumableLoader(Keys(), batch_size=3, seed=5)
    resumed.load_state_dict(interrupted.state_dict())
    rest = list(resumed)
    for got, want in zip(taken + rest, reference[1], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for got, want in zip(list(resumed), reference[2], strict=True):  # and the pass after it
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    finished = ResumableLoader(Keys(), batch_size=3, seed=5)
    finished.load_state_dict({"pass": 0, "batches": 4})  # saved after the last batch of pass 0
    torch.testing.assert_close(torch.cat(list(finished)), torch.cat(reference[1]), rtol=0, atol=0)

    with pytest.raises(ValueError, match="data seed is 5, this run's 6"):
        ResumableLoader(Keys(), batch_size=3, seed=6).load_state_dict(interrupted.state_dict())
    with pytest.raises(ValueError, match="batch_size is 3, this run's 2"):
        ResumableLoader(Keys(), batch_size=2, seed=5).load_state_dict(interrupted.state_dict())


def test_ranks_split_each_pass_without_overlap():
    shards = [list(KeyedSampler(Keys(), num_replicas=2, rank=r, seed=1)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(k.index for shard in shards for k in shard) == list(range(10))
    sampler = KeyedSampler(Keys(), num_replicas=2, rank=1, seed=1)
    sampler.start_pass(0, skip=3)
    assert list(sampler) == shards[1][3:]


class Dropped(L.LightningModule):
    """A dropout net: its training draws from torch's global RNG every step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.5), nn.Linear(16, 1))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return (self.net(batch.float() / 10) - 1).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> ResumableLoader:
        return ResumableLoader(Keys(), batch_size=2, seed=0)


def _fit(root, steps: int, callbacks: list, ckpt_path=None) -> L.Trainer:
    L.seed_everything(0)  # as the CLI does at every start
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                        default_root_dir=root)
    trainer.fit(Dropped(), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("restore", [True, False])
def test_global_rng_resumes_with_the_checkpoint(tmp_path, restore):
    extra = [RestoreRNG] if restore else []
    whole = _fit(tmp_path, 7, [c() for c in extra]).lightning_module.net.state_dict()
    first = _fit(tmp_path, 3, [c() for c in extra])  # 3 of the 5 batches of epoch 0
    first.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = _fit(tmp_path, 7, [c() for c in extra], ckpt_path=tmp_path / "mid.ckpt")
    weights = resumed.lightning_module.net.state_dict()
    diff = max((weights[k] - v).abs().max().item() for k, v in whole.items())
    if restore:
        assert diff == 0
    else:  # the control: reseeding alone replays the dropout masks of steps 0.. at steps 3..
        assert diff > 1e-4

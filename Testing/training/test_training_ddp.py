"""The segmentation recipe in the shared loop under DistributedDataParallel: two CPU processes (gloo) end with
the same weights."""

import pytest
import torch
import torch.multiprocessing as mp

from BrainTumorFusionLib import networks
from BrainTumorFusionLib.files.file_io import TEMPORARY_PREFIX
from Testing.training.training_support import TINY_HAFB, ddp_worker, free_port, tiny_config
from Training import checkpoint as ckpt


@pytest.mark.slow
def test_two_gloo_ranks_train_in_step(tmp_path):
    config = tiny_config(tmp_path / "run", steps=3, batch_size=1, checkpoint_every=3).to_dict()
    mp.spawn(ddp_worker, args=(2, free_port(), config, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))

    # Each rank trained on its own samples (different losses) ...
    assert len(rank0["losses"]) == len(rank1["losses"]) == 3
    assert rank0["losses"] != rank1["losses"]
    # ... and all-reduced gradients kept the parameters identical.
    assert rank0["parameters"].keys() == rank1["parameters"].keys()
    for name in rank0["parameters"]:
        assert torch.equal(rank0["parameters"][name], rank1["parameters"][name]), name
    # They moved away from the (shared) initial weights.
    torch.manual_seed(config["seed"])
    initial = dict(networks.build("hafb", **TINY_HAFB).named_parameters())
    assert any(not torch.equal(initial[n], p) for n, p in rank0["parameters"].items())

    # Only rank 0 wrote the checkpoint: its network state at step 3, with both ranks' RNG states.
    saved = ckpt.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["step"] == 3 and saved["world_size"] == 2 and len(saved["rng"]) == 2
    for name, value in rank0["parameters"].items():
        assert torch.equal(saved["model"][name], value), name
    for name, value in rank0["buffers"].items():
        assert torch.equal(saved["model"][name], value), name
    assert not list((tmp_path / "run" / "checkpoints").glob(f"{TEMPORARY_PREFIX}*"))

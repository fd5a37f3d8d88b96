"""Training.loop with the segmentation recipe: the loss goes down on a fixed batch; checkpoints; a killed run
resumes exactly; LR schedules."""

import json
import math

import pytest
import torch

from BrainTumorFusionLib import networks
from BrainTumorFusionLib.engine.auto_choice import WORST_WT_FLOOR
from Testing.training.training_support import CASES, TINY_HAFB, one_thread, tiny_config, workspace  # noqa: F401
from Training import checkpoint as ckpt
from Training.config import RunConfig
from Training.data import cache_path
from Training.loop import lr_scheduler, optimizer_step, restore_scheduler, run
from Training.segmentation import SegmentationRecipe, checkpoint_score, train
from Training.transforms import PatchDataset, cube_voxels

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(Exception):
    pass


def test_steps_on_a_fixed_batch_reduce_the_loss():
    _, cache_dir = workspace()
    paths = {c: cache_path(cache_dir, (2.0, 2.0, 2.0), c) for c in CASES}
    dataset = PatchDataset(CASES, paths, (32, 32, 32), seed=0, pos=1.0, neg=0.0, cube=cube_voxels(20, (2, 2, 2)))
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    torch.manual_seed(0)
    net = networks.build("hafb", **TINY_HAFB).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    recipe = SegmentationRecipe(tiny_config("unused"))
    assert recipe.aux_weight == 0.1 and recipe.masked_view is not None
    model = recipe.wrap(net, 0)
    losses = []
    for _ in range(10):
        loss, parts = recipe.loss(model, batch, 0, 0)
        parts["grad_norm"] = optimizer_step(loss, parts["total"], optimizer, list(net.parameters()), 1.0)
        losses.append(parts)
    assert all("aux" in parts and parts["grad_norm"] > 0 for parts in losses)
    totals = [parts["total"] for parts in losses]
    assert totals[-1] < 0.9 * totals[0] and max(totals[-3:]) < min(totals[:3]), totals


def weights(path):
    return ckpt.load(path)["model"]


@pytest.mark.slow
def test_resume_after_a_kill_continues_exactly(tmp_path):
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    straight = train(tiny_config(straight_dir, validate_every=4), progress=False)
    assert straight["step"] == 4 and len(straight["losses"]) == 4

    def kill_after_step_3(step, network, parts):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):  # dies after step 3; its last checkpoint is from step 2
        train(tiny_config(resumed_dir), progress=False, callback=kill_after_step_3)
    assert ckpt.load(resumed_dir / "checkpoints" / "last.pt")["step"] == 2
    resumed = train(tiny_config(resumed_dir), resume=True, progress=False)
    assert resumed["step"] == 4 and len(resumed["losses"]) == 2

    # Same losses for steps 3 and 4, and the same final weights, optimizer state and schedule.
    assert resumed["losses"] == straight["losses"][2:]
    a, b = ckpt.load(straight["last"]), ckpt.load(resumed["last"])
    assert a["step"] == b["step"] == 4
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in ("exp_avg", "exp_avg_sq"):
        for index in a["optimizer"]["state"]:
            assert torch.equal(a["optimizer"]["state"][index][key], b["optimizer"]["state"][index][key])
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])

    # The run folder records config, split (also in the checkpoint) and metrics; the killed step's record is gone.
    split = json.loads((resumed_dir / "split.json").read_text())
    assert split == b["split"] and split["train"] and split["validation"]
    assert not set(split["train"]) & set(split["validation"])
    assert json.loads((resumed_dir / "config.json").read_text())["network_config"] == TINY_HAFB
    steps = [json.loads(line)["step"] for line in (resumed_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # Validation ran on the straight run's last step and kept the best checkpoint.
    assert straight["validation"][0]["cases"] == 1 and 0 <= straight["validation"][0]["dice_mean"] <= 1
    # With one validation case, the worst case is that case and its WT Dice is the mean's.
    assert straight["validation"][0]["worst_WT_case"] == split["validation"][0]
    assert straight["validation"][0]["worst_WT"] == straight["validation"][0]["dice_WT"]
    assert ckpt.load(straight["best"])["best"]["step"] == 4
    assert ckpt.load(straight["best"])["kind"] == "segmentation"
    records = [json.loads(line) for line in (straight_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val/dice_WT" in r for r in records)


def test_command_line_trains_the_segresnet_baseline_and_resumes_from_the_run_config(tmp_path):
    from Training.__main__ import build_parser, main, train_config

    input_dir, cache_dir = workspace()
    run_dir = tmp_path / "segresnet"
    assert main(["train", "--network", "segresnet", "--data-dir", str(input_dir), "--cache-dir", str(cache_dir),
                 "--run-dir", str(run_dir), "--patch-size", "32", "32", "32", "--batch-size", "1", "--steps", "1",
                 "--validate-every", "0", "--workers", "0", "--device", "cpu", "--quiet"]) == 0
    saved = ckpt.load(run_dir / "checkpoints" / "last.pt")
    assert saved["step"] == 1 and saved["config"]["network_config"] == {"init_filters": 8}
    assert saved["config"]["spacing"] == [2.0, 2.0, 2.0] and saved["config"]["modality_dropout"] is None
    from monai.networks.nets import SegResNet

    SegResNet(spatial_dims=3, in_channels=4, out_channels=3, init_filters=8).load_state_dict(saved["model"])

    # --resume takes the run's config.json; only the options given change it.
    config = train_config(build_parser().parse_args(["train", "--run-dir", str(run_dir), "--resume", "--steps", "5"]))
    assert config.network == "segresnet" and config.steps == 5 and config.patch_size == [32, 32, 32]
    assert config.data_dir == str(input_dir) and config.network_config == {"init_filters": 8}
    fresh = train_config(build_parser().parse_args(["train", "--network", "missu", "--data-dir", "d", "--cache-dir",
                                                    "c", "--spacing", "native", "--paper-size"]))
    assert fresh.network_config == {} and fresh.spacing is None and fresh.network == "missu"


def test_command_line_trains_from_a_prepared_cache_alone_and_names_a_case_it_lacks(tmp_path):
    """A GPU machine gets the cache and a split, not the cases' folder."""
    from Training.__main__ import main
    from Training.data import InputError

    _, cache_dir = workspace()
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": list(CASES[:2]), "validation": [CASES[2]]}))
    options = ["train", "--network", "segresnet", "--cache-dir", str(cache_dir), "--split-file", str(split_file),
               "--patch-size", "32", "32", "32", "--batch-size", "1", "--steps", "1", "--validate-every", "1",
               "--workers", "0", "--device", "cpu", "--quiet"]
    assert main(options + ["--run-dir", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "split.json").read_text())["validation"] == [CASES[2]]
    assert ckpt.load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 1

    split_file.write_text(json.dumps({"train": list(CASES[:2]), "validation": ["Brats18_NOT_PREPARED_1"]}))
    with pytest.raises(InputError, match="Brats18_NOT_PREPARED_1.*--data-dir"):
        main(options + ["--run-dir", str(tmp_path / "refused")])
    with pytest.raises(SystemExit, match="--split-file"):
        main(["train", "--cache-dir", str(cache_dir), "--run-dir", str(tmp_path / "neither")])


@pytest.mark.parametrize("schedule, expected", [
    ("poly", lambda s: (1 - (s - 2) / 8) ** 0.9 if s >= 2 else None),
    ("cosine", lambda s: 0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) if s >= 2 else None),
    ("constant", lambda s: 1.0 if s >= 2 else None),
])
def test_schedules_warm_up_linearly_then_follow_torchs_schedulers(schedule, expected):
    config = RunConfig(lr=1.0, schedule=schedule, warmup_steps=2)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = lr_scheduler(optimizer, config, 10)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.5) and rates[1] == pytest.approx(0.75)
    for step in range(2, 10):
        assert rates[step] == pytest.approx(expected(step)), (step, rates)


@pytest.mark.parametrize("schedule", ["poly", "cosine"])
def test_a_resumed_run_with_more_steps_decays_to_zero_at_the_new_total(schedule):
    def rates(scheduler, optimizer, steps):
        out = []
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
            out.append(optimizer.param_groups[0]["lr"])
        return out

    # Save after 5 steps of a 10-step plan, resume with a 20-step plan.
    config = RunConfig(lr=1.0, schedule=schedule, warmup_steps=2)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    original = lr_scheduler(optimizer, config, 10)
    first = rates(original, optimizer, 5)
    saved = {"optimizer": optimizer.state_dict(), "scheduler": original.state_dict()}
    resumed_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed = lr_scheduler(resumed_optimizer, config, 20)
    restore_scheduler(resumed, saved["scheduler"])
    later = rates(resumed, resumed_optimizer, 15)
    assert later[0] < first[-1] and all(b <= a + 1e-12 for a, b in zip(later, later[1:]))
    assert later[4] > 0.05 and later[-1] == pytest.approx(0.0, abs=1e-9)  # not at 0 at the old end, 0 at the new


def test_a_step_with_non_finite_gradients_is_skipped():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    loss = (weight * torch.tensor([1.0, float("inf"), 1.0])).sum() * 0  # finite loss (nan * 0 aside), inf gradient
    assert optimizer_step(loss, 0.0, optimizer, [weight], grad_clip=1.0) is None
    assert torch.equal(weight.detach(), torch.ones(3))  # not moved
    loss = (weight * 2).sum()
    assert optimizer_step(loss, float(loss), optimizer, [weight], grad_clip=1.0) == pytest.approx(12 ** 0.5)
    assert not torch.equal(weight.detach(), torch.ones(3))
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        optimizer_step(loss, float("nan"), optimizer, [weight], grad_clip=1.0)


def test_best_checkpoint_prefers_a_lower_mean_without_a_collapse_to_a_higher_one_with():
    steady = {"dice_mean": 0.70, "worst_WT": WORST_WT_FLOOR}
    collapsed = {"dice_mean": 0.80, "worst_WT": WORST_WT_FLOOR - 0.01}
    assert checkpoint_score(steady) > checkpoint_score(collapsed)
    # Between two steady (or two collapsed) checkpoints the mean decides.
    assert checkpoint_score({**steady, "dice_mean": 0.71}) > checkpoint_score(steady)
    assert checkpoint_score({**collapsed, "dice_mean": 0.81}) > checkpoint_score(collapsed)


def test_a_recipe_changes_its_optimizer_and_loss_by_overriding_one_hook_each(tmp_path):
    """nnU-Net's way: a variant of the segmentation recipe is a subclass with the hooks it changes."""
    losses = []

    class SGDRecipe(SegmentationRecipe):
        def configure_optimizer(self, parameters):
            return torch.optim.SGD(parameters, lr=self.config.lr, momentum=0.9)

        def build_loss(self):
            losses.append(super().build_loss())
            return losses[-1]

    result = run(SGDRecipe, tiny_config(tmp_path / "sgd", steps=2), progress=False)
    assert result["step"] == 2 and result["recipe"].criterion is losses[0]
    state = torch.load(result["last"], map_location="cpu", weights_only=True)
    assert all("momentum_buffer" in parameter for parameter in state["optimizer"]["state"].values())  # SGD's, not AdamW's

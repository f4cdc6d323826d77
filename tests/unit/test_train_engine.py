"""The training engine on a toy task: accumulation, resume to identical weights, the non-finite stop."""

from __future__ import annotations

import torch
import torch.nn as nn

from bevt_core.train.distributed import Dist
from bevt_core.train.engine import Settings, Task, train
from bevt_core.train.optim import param_groups, pretrain_keys
from bevt_core.train.options import OptimConfig, RunConfig, ScheduleConfig
from bevt_core.train.state import CheckpointStore

ENV = Dist(0, 1, 0, torch.device("cpu"))
N = 32


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 6, generator=g), torch.randint(0, 3, (N,), generator=g)


def make_task(micro: int, nan_at: int = -1, ema: float = 0.0) -> Task:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Dropout(0.2), nn.Linear(16, 3))
    x, y = data()
    calls = {"n": 0}

    def batches(epoch, start):
        order = torch.randperm(N, generator=torch.Generator().manual_seed(epoch))
        for m in range(start, N // micro):
            idx = order[m * micro : (m + 1) * micro]
            yield x[idx], y[idx]

    def loss(net, batch):
        calls["n"] += 1
        out = nn.functional.cross_entropy(net(batch[0]), batch[1])
        if calls["n"] == nan_at:
            out = out * float("nan")
        return {"loss": out}

    return Task(
        model, param_groups(model, 0.05, 0.01, pretrain_keys()), N // micro, micro, batches, loss, ema_decay=ema
    )


def run_cfg(tmp_path, **kw) -> RunConfig:
    return RunConfig(
        work_dir=str(tmp_path),
        batch_size=kw.pop("batch_size", 4),
        accum_steps=kw.pop("accum", 1),
        precision="fp32",
        workers=0,
        **kw,
    )


OPTIM = OptimConfig(lr=0.05, weight_decay=0.01, groups="pretrain", clip_grad=1.0)


def fit(task, tmp_path, epochs=3, max_steps=0, **kw):
    sched = ScheduleConfig(epochs=epochs, warmup_epochs=1, cosine_by_epoch=False, max_steps=max_steps)
    return train(
        task, Settings(run_cfg(tmp_path, **kw), OPTIM, sched, {}), ENV, lambda values, step: None, say=lambda s: None
    )


def weights(task) -> list[torch.Tensor]:
    return [p.detach().clone() for p in task.model.parameters()]


def test_resume_reaches_the_same_weights(tmp_path):
    full = make_task(4, ema=0.9)
    result = fit(full, tmp_path / "full", checkpoint_every=3)
    assert result.steps == 3 * N // 4
    part = make_task(4, ema=0.9)
    stopped = fit(part, tmp_path / "part", checkpoint_every=3, max_steps=10)
    assert stopped.steps == 10
    store = CheckpointStore(str(tmp_path / "part"), keep_last=2)
    assert store.kept() == ["state-00000009.pt", "state-00000010.pt"]  # keep_last
    resumed = make_task(4, ema=0.9)  # fresh process state: new model, then --resume auto
    torch.manual_seed(123)  # RNG state must come from the checkpoint, not from here
    again = fit(resumed, tmp_path / "part", checkpoint_every=3)
    assert again.resumed_from.endswith("state-00000010.pt") and again.steps == result.steps
    for a, b in zip(weights(full), weights(resumed)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(result.ema_model.parameters(), again.ema_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # The metric log travels with the state: the resumed run reports the whole run's first and last steps.
    def logged(result):
        return [(h["step"], h["loss"], h["lr"]) for h in result.history]

    assert logged(again) == logged(result) and again.mean("loss", first=True) == result.mean("loss", first=True)
    # A run resumed after its end trains nothing and still reports how it ended.
    finished = fit(make_task(4, ema=0.9), tmp_path / "full", checkpoint_every=3)
    assert finished.steps == result.steps and logged(finished) == logged(result)
    assert finished.mean("loss", first=False) == result.mean("loss", first=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    task = make_task(4, nan_at=12)
    result = fit(task, tmp_path, checkpoint_every=5)
    assert result.stopped and "non-finite" in result.stopped
    # Loss call 1 is the FLOP count, so call 12 is micro-step 11: step 11 fails, 10 are done.
    assert result.steps == 10 and result.checkpoint.endswith("state-00000010.pt")
    assert CheckpointStore(str(tmp_path), 2).kept()[-1] == "state-00000010.pt"
    assert all(torch.isfinite(p).all() for p in task.model.parameters())


def test_no_watchdog_thread_outlives_training(tmp_path):
    """The evaluation loader forks its workers right after training returns; a thread still tearing
    down at that moment can leave a worker deadlocked on CPython's thread-state lock."""
    import threading

    for run in range(5):
        fit(make_task(4), tmp_path / str(run), epochs=1)
        assert not [t for t in threading.enumerate() if t.name == "bevt-watchdog"]


def test_validation_every_n_epochs_keeps_the_best_weights(tmp_path):
    """Validation at every 2nd epoch end and at the end; the best weights are written beside the checkpoints
    and their record survives a resume."""
    from bevt_core.models import read_state_dict

    task = make_task(4)
    seen, scores = [], iter([0.5, 0.9, 0.7, 0.2])  # the 2nd validation is the best

    def validate(model):
        seen.append([p.detach().clone() for p in model.parameters()])
        return {"top1": next(scores)}

    task.validate, task.validate_every = validate, 2
    result = fit(task, tmp_path, epochs=5)  # 8 steps per epoch: validations after epochs 2 and 4, and the end
    validations = [h for h in result.history if "val_top1" in h]
    assert [h["step"] for h in validations] == [16, 32, 40] and [h["val_top1"] for h in validations] == [0.5, 0.9, 0.7]
    assert result.best["step"] == 32 and result.best["top1"] == 0.9 and result.best_weights.endswith("best.pt")
    best = read_state_dict(result.best_weights)
    for kept, expected in zip(best.values(), seen[1], strict=True):
        torch.testing.assert_close(kept, expected, rtol=0, atol=0)
    # A finished run resumed trains and validates nothing, and still knows its best.
    resumed = make_task(4)
    resumed.validate, resumed.validate_every = validate, 2
    again = fit(resumed, tmp_path, epochs=5)
    assert again.best == result.best and len(seen) == 3

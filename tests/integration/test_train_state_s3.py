"""Training-state checkpoints on a real S3 server: atomic writes, keep-last-k, resume from the index."""

from __future__ import annotations

import torch
import torch.nn as nn

from bevt_core import storage
from bevt_core.train.state import CheckpointStore, Position, load_state


def test_checkpoints_on_s3_keep_last_and_restore(s3):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    store = CheckpointStore("s3://bevt-test/train-state/run1", keep_last=2)
    assert store.latest() is None
    for step in (1, 2, 3):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        store.save(
            model,
            opt,
            Position(step=step, micro=step, epoch=0, epoch_micro=step, samples=3 * step),
            None,
            None,
            {"k": step},
        )
    assert store.kept() == ["state-00000002.pt", "state-00000003.pt"]
    assert not storage.exists(store.path(1)) and storage.exists(store.path(3))
    expected = [p.detach().clone() for p in model.parameters()]
    rng_next = torch.rand(3)

    fresh = nn.Linear(4, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    torch.manual_seed(99)
    position, _, _ = load_state(store.latest(), fresh, fresh_opt, None, None)
    assert position == Position(step=3, micro=3, epoch=0, epoch_micro=3, samples=9)
    for a, b in zip(expected, fresh.parameters()):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()["state"][0]["step"] == 3
    assert torch.equal(torch.rand(3), rng_next)  # the RNG continues where the saved run was

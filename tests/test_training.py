"""The shared resumable loop: a run killed at an arbitrary step and resumed ends bit-identical."""

import pytest
import torch

from adrepro.training import Interrupted, config_hash, run_loop, seed_everything


def _fit(work, stop_after=None, seed=0, steps=17):
    g = seed_everything(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    data = torch.randn(32, 4, generator=torch.Generator().manual_seed(99))

    def step(i):
        idx = torch.randint(len(data), (4,), generator=g)
        loss = model(data[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": loss.item()}

    run_loop(total_steps=steps, step_fn=step, state={"model": model, "opt": opt, "sched": sched}, work_dir=work,
             cfg_hash=config_hash({"seed": seed}), generator=g, checkpoint_every=4, stop_after=stop_after)
    return model.state_dict()


def test_kill_and_resume_is_bit_identical(tmp_path):
    full = _fit(tmp_path / "a")
    with pytest.raises(Interrupted):
        _fit(tmp_path / "b", stop_after=10)  # killed mid-interval: steps 8..9 are redone on resume
    resumed = _fit(tmp_path / "b")
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_other_config_does_not_resume(tmp_path):
    with pytest.raises(Interrupted):
        _fit(tmp_path / "c", stop_after=8, seed=0)
    other = _fit(tmp_path / "c", seed=1)
    fresh = _fit(tmp_path / "d", seed=1)
    assert all(torch.equal(other[k], fresh[k]) for k in other)

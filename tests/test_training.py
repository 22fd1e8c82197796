"""The shared resumable loop: a run killed at an arbitrary step and resumed ends bit-identical with its whole
loss history; a non-finite loss or weight stops it, naming the step, the loss terms and the knob."""

import pytest
import torch

from adrepro.training import Interrupted, NonFiniteError, config_hash, knob_hint, run_loop, seed_everything


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


def _loop(work, step_fn, steps=12, checkpoint_every=4, log_every=10, history=None, stop_after=None, knob=""):
    g = seed_everything(0)
    model = torch.nn.Linear(2, 1)
    return model, run_loop(total_steps=steps, step_fn=lambda i: step_fn(i, model), state={"model": model}, work_dir=work,
                           cfg_hash="h", generator=g, checkpoint_every=checkpoint_every, log_every=log_every,
                           log_metric=(lambda n, v, s: history.append((n, v, s))) if history is not None else
                           (lambda n, v, s: None), stop_after=stop_after, knob=knob)


def test_nonfinite_float_loss_names_step_terms_and_knob_and_is_never_checkpointed(tmp_path):
    def step(i, model):
        return {"loss": float("nan") if i == 6 else 1.0, "hard": float("inf") if i == 6 else 0.5, "ae": 0.25}

    with pytest.raises(NonFiniteError) as e:
        _loop(tmp_path, step, knob="methods.x.lr = 1e30")
    msg = str(e.value)
    assert "step 6 of 12" in msg and "loss=nan" in msg and "hard=inf" in msg and "ae=0.25" in msg
    assert "methods.x.lr = 1e30" in msg and e.value.step == 6
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 4  # steps 4..5 are never saved


def test_tensor_losses_are_checked_without_a_per_step_sync_but_name_the_first_bad_step(tmp_path):
    ran = []

    def step(i, model):
        ran.append(i)
        return {"loss": torch.tensor(float("nan") if i in (3, 5) else 1.0)}

    with pytest.raises(NonFiniteError) as e:
        _loop(tmp_path, step, steps=30, checkpoint_every=100, log_every=10)
    assert e.value.step == 3 and "step 3 of 30" in str(e.value)
    assert ran == list(range(11))  # read at the logging step 10, not at step 3
    assert not (tmp_path / "last.pt").exists()


def test_nonfinite_weights_with_a_finite_loss_stop_at_the_checkpoint(tmp_path):
    def step(i, model):
        if i == 5:
            with torch.no_grad():
                model.weight[0, 0] = float("inf")
        return {"loss": 1.0}

    with pytest.raises(NonFiniteError, match=r"non-finite weights \(model\) at step 7") as e:
        _loop(tmp_path, step)
    assert "checkpoint" in str(e.value) and "(step 4) kept" in str(e.value)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=False)
    assert ckpt["step"] == 4 and torch.isfinite(ckpt["states"]["model"]["weight"]).all()


def test_knob_hint_names_the_params_key_for_loops_without_their_own(tmp_path):
    with knob_hint("profiles.smoke.methods.kd_cnn.lr = 1e+30 in params.yaml"), pytest.raises(NonFiniteError) as e:
        _loop(tmp_path, lambda i, m: {"loss": float("nan")})
    assert "likely knob: profiles.smoke.methods.kd_cnn.lr = 1e+30 in params.yaml" in str(e.value)


def test_resumed_run_reports_the_whole_loss_history(tmp_path):
    def step(i, model):
        return {"loss": 1.0 / (i + 1)}

    full: list = []
    _loop(tmp_path / "a", step, steps=9, checkpoint_every=3, log_every=2, history=full)
    before: list = []
    with pytest.raises(Interrupted):
        _loop(tmp_path / "b", step, steps=9, checkpoint_every=3, log_every=2, history=before, stop_after=5)
    after: list = []
    _loop(tmp_path / "b", step, steps=9, checkpoint_every=3, log_every=2, history=after)
    assert [s for _, _, s in full] == [0, 2, 4, 6, 8]
    assert after == full  # resumed from step 3: step 0 and 2 come from the checkpoint, 4..8 are run again

"""build_optimizer: the fused AdamW kernel is used on CPUs too (it is what keeps the CPU
Stage-1 step at or above the official one's speed, BENCHMARKS.md) and gives the same update as
the multi-tensor AdamW the official code uses."""

import torch
import torch.nn as nn

from umt.configs import OptimConfig
from umt.train.optim import build_optimizer, param_groups


def _run(fused: bool, steps: int = 5) -> tuple[torch.optim.AdamW, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 3))
    cfg = OptimConfig(weight_decay=0.05, betas=[0.9, 0.95], fused=fused)
    opt = build_optimizer(param_groups(model, cfg.weight_decay), cfg, 1e-2, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(5, 7, generator=g), torch.randn(5, 3, generator=g)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return opt, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fused_adamw_on_cpu_when_configured_and_same_update_as_foreach():
    fused_opt, fused = _run(fused=True)
    plain_opt, plain = _run(fused=False)
    assert fused_opt.defaults["fused"] is True
    assert not plain_opt.defaults["fused"]
    # both decayed and non-decayed groups moved, identically up to rounding
    assert [g["weight_decay"] for g in fused_opt.param_groups] == [0.05, 0.0]
    for k in fused:
        torch.testing.assert_close(fused[k], plain[k], rtol=1e-5, atol=1e-6)
    # the optimizer state has the same layout, so checkpoints move between the two
    assert fused_opt.state_dict()["state"].keys() == plain_opt.state_dict()["state"].keys()
    for a, b in zip(fused_opt.state_dict()["state"].values(), plain_opt.state_dict()["state"].values()):
        assert a.keys() == b.keys()
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=1e-5, atol=1e-9)

"""UTA loss on hand-made vectors."""

import pytest
import torch

from umt.losses import uta_loss


def unit(*v):
    t = torch.tensor(v, dtype=torch.float32)
    return t / t.norm()


def test_l2_is_two_minus_two_cos():
    s = torch.stack([unit(1, 0), unit(0, 1), unit(1, 1)]).view(1, 1, 3, 2)
    t = torch.stack([unit(1, 0), unit(1, 0), unit(-1, -1)]).view(1, 1, 3, 2)
    # per token: identical -> 0, orthogonal -> 2, opposite -> 4; mean = 2
    assert uta_loss(s, t).item() == pytest.approx(2.0)


def test_mean_over_layers_batch_tokens():
    s = unit(1, 0).expand(2, 3, 4, 2)
    t = s.clone()
    t[1] = unit(0, 1)  # second layer orthogonal everywhere -> layer losses 0 and 2
    assert uta_loss(s, t).item() == pytest.approx(1.0)


def test_targets_gathered_at_visible_positions():
    target = torch.zeros(1, 1, 4, 2)
    target[0, 0, :, 0] = 1.0                       # all tokens point along x ...
    target[0, 0, 2] = unit(0, 1)                   # ... except token 2
    mask = torch.tensor([[True, True, False, True]])  # only token 2 visible
    student = unit(0, 1).view(1, 1, 1, 2)
    assert uta_loss(student, target, mask).item() == pytest.approx(0.0)
    assert uta_loss(unit(1, 0).view(1, 1, 1, 2), target, mask).item() == pytest.approx(2.0)


def test_mse_and_smooth_l1_options():
    s, t = torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.0, 0.0]]]])
    assert uta_loss(s, t, kind="mse").item() == pytest.approx(0.5)
    assert uta_loss(s, t, kind="smooth_l1").item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown UTA loss"):
        uta_loss(s, t, kind="cos")
    with pytest.raises(ValueError, match="differ"):
        uta_loss(s, torch.zeros(1, 1, 2, 2))

"""The losses of Barlow Twins, VICReg, DINO, MoCo v3, NNCLR and SwAV against independent implementations on the
same inputs: lightly's loss classes (when lightly is installed: `pip install --no-deps lightly`; CI skips that
part) and hand-written transcriptions of the official formulas (always), plus hand-made cases whose value is
known. Inputs are float64, so the tolerance is 1e-10 relative wherever two implementations must agree (they
differ only in summation order); docs/methods.md lists where sslab deliberately departs from one of them."""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sslab.methods.barlowtwins import barlow_twins_loss, cross_correlation
from sslab.methods.dino import DINOHead, dino_loss, teacher_temperature, updated_center
from sslab.methods.mocov3 import mocov3_loss
from sslab.methods.nnclr import nearest_neighbour, nnclr_loss
from sslab.methods.swav import sinkhorn, swav_loss
from sslab.methods.vicreg import covariance_term, variance_term, vicreg_loss, vicreg_terms

RTOL = 1e-10  # float64 inputs: two implementations of one formula agree to rounding


def rand(*shape, seed=0, grad=False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.requires_grad_() if grad else x


def close(a, b, rtol=RTOL):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert torch.allclose(a, b, rtol=rtol, atol=rtol), (a, b)


# ---- lightly, loaded without its package __init__ (which imports torchvision) --------------------------------------
@contextlib.contextmanager
def _bare_packages(root: Path, names: list[str]):
    """Empty package modules for lightly's packages, so importing one loss file runs no __init__; removed again
    afterwards (with every lightly module imported meanwhile), leaving sys.modules as it was."""
    before = set(sys.modules)
    for name in names:
        module = types.ModuleType(name)
        module.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
        sys.modules[name] = module
    try:
        yield
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]
        for name in names:
            sys.modules.pop(name, None)


def lightly_loss(module: str):
    """lightly.loss.<module>, or skip when lightly is not installed (CI)."""
    spec = importlib.util.find_spec("lightly")
    if spec is None or spec.origin is None:
        pytest.skip("lightly is not installed (pip install --no-deps lightly-1.6.0-py3-none-any.whl)")
    root = Path(spec.origin).parent
    with _bare_packages(root, ["lightly", "lightly.loss", "lightly.utils", "lightly.models", "lightly.models.modules"]):
        return importlib.import_module(f"lightly.loss.{module}")


# ---- Barlow Twins ---------------------------------------------------------------------------------------------------
def official_barlow_twins(z1, z2, lambd):
    """The official main.py: BatchNorm1d(affine=False) in training mode, c /= batch, on/off-diagonal sums
    (written as loops here)."""
    bn = torch.nn.BatchNorm1d(z1.shape[1], affine=False).double().train()
    c = bn(z1).T @ bn(z2) / z1.shape[0]
    d = c.shape[0]
    on = sum((c[i, i] - 1) ** 2 for i in range(d))
    off = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    return on + lambd * off


def test_barlow_twins_matches_the_official_formula_and_lightly():
    z1, z2 = rand(32, 6, seed=1) * 3 + 1, rand(32, 6, seed=2)
    ours = barlow_twins_loss(z1, z2, lambd=0.0051)
    close(ours, official_barlow_twins(z1, z2, 0.0051))
    lightly = lightly_loss("barlow_twins_loss")
    close(ours, lightly.BarlowTwinsLoss(lambda_param=0.0051)(z1, z2))


def test_barlow_twins_is_zero_for_identical_decorrelated_views():
    """Columns of +-1 patterns that are orthogonal and centred: C is exactly the identity."""
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64)
    z = h[:, 1:].repeat(4, 1)  # 16 x 3: mean 0, variance 1, pairwise uncorrelated
    close(cross_correlation(z, z), torch.eye(3), rtol=1e-4)  # BN's eps 1e-5 shrinks the diagonal a little
    assert barlow_twins_loss(z, z) < 1e-8
    assert barlow_twins_loss(z, -z) == pytest.approx(3 * 4, rel=1e-4)  # C = -I: each diagonal term (1 + 1)^2


# ---- VICReg ----------------------------------------------------------------------------------------------------------
def official_vicreg(x, y, sim=25.0, std=25.0, cov=1.0):
    """The official main_vicreg.py forward, on one process."""
    n, d = x.shape
    repr_loss = F.mse_loss(x, y)
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    std_x, std_y = torch.sqrt(x.var(dim=0) + 0.0001), torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x, cov_y = (x.T @ x) / (n - 1), (y.T @ y) / (n - 1)
    off = ~torch.eye(d, dtype=torch.bool)
    cov_loss = cov_x[off].pow(2).sum() / d + cov_y[off].pow(2).sum() / d
    return sim * repr_loss + std * std_loss + cov * cov_loss


def test_vicreg_matches_the_official_formula_and_lightly():
    z1, z2 = rand(24, 8, seed=3) * 0.5, rand(24, 8, seed=4) * 2  # one view under the variance hinge, one above
    ours = vicreg_loss(z1, z2)
    close(ours, official_vicreg(z1, z2))
    lightly = lightly_loss("vicreg_loss")
    close(ours, lightly.VICRegLoss(lambda_param=25.0, mu_param=25.0, nu_param=1.0)(z1, z2))


def test_vicreg_terms_on_hand_made_cases():
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]], dtype=torch.float64)
    # per-column unbiased variances 2/3 and 8/3; covariance 0 (the columns never both move)
    expected_var = (max(0, 1 - math.sqrt(2 / 3 + 1e-4)) + max(0, 1 - math.sqrt(8 / 3 + 1e-4))) / 2
    close(variance_term(z), expected_var)
    close(covariance_term(z), 0.0)
    c = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)  # cov = 4/3 off-diagonal
    close(covariance_term(c), 2 * (4 / 3) ** 2 / 2)
    inv, var, cov = vicreg_terms(z, z)
    assert inv == 0 and var == variance_term(z) and cov == 2 * covariance_term(z)


# ---- DINO --------------------------------------------------------------------------------------------------------------
def official_dino(student_crops, teacher_crops, center, student_temp, temp, momentum):
    """The official DINOLoss.forward + update_center (one process): the crops concatenated, then chunked."""
    student_out = (torch.cat(student_crops) / student_temp).chunk(len(student_crops))
    teacher_output = torch.cat(teacher_crops)
    teacher_out = F.softmax((teacher_output - center) / temp, dim=-1).detach().chunk(2)
    total_loss, n_loss_terms = 0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            total_loss += torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
            n_loss_terms += 1
    batch_center = torch.sum(teacher_output, dim=0, keepdim=True) / len(teacher_output)
    return total_loss / n_loss_terms, center * momentum + batch_center * (1 - momentum)


def test_dino_loss_and_centre_match_the_official_code_and_lightly():
    k, b = 12, 5
    student = [rand(b, k, seed=10 + v) for v in range(6)]  # 2 global + 4 local crops
    teacher = [rand(b, k, seed=20 + v) * 3 for v in range(2)]
    center = rand(1, k, seed=30) * 0.1
    loss = dino_loss(student, teacher, center, student_temp=0.1, teacher_temp=0.04)
    new_center = updated_center(center, teacher, momentum=0.9)
    ref_loss, ref_center = official_dino(student, teacher, center, 0.1, 0.04, 0.9)
    close(loss, ref_loss)
    close(new_center, ref_center)
    lightly = lightly_loss("dino_loss").DINOLoss(output_dim=k, warmup_teacher_temp=0.04, teacher_temp=0.04,
                                                 warmup_teacher_temp_epochs=0, student_temp=0.1, center_momentum=0.9)
    lightly = lightly.double()
    lightly.center.copy_(center.view(1, 1, k))
    # lightly holds the teacher temperature as a float32 tensor (0.04 to 7 digits): agreement to 1e-6 relative
    close(loss, lightly(teacher, student, teacher_temp=0.04), rtol=1e-6)
    close(new_center, lightly.center.view(1, k))


def test_dino_loss_gradient_reaches_the_student_only():
    student = [rand(4, 6, seed=v, grad=True) for v in range(3)]
    teacher = [rand(4, 6, seed=10 + v, grad=True) for v in range(2)]
    dino_loss(student, teacher, torch.zeros(1, 6, dtype=torch.float64)).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)


def test_dino_teacher_temperature_follows_the_official_schedule():
    import numpy as np

    warm, final, epochs, total = 0.04, 0.07, 30, 100
    schedule = np.concatenate((np.linspace(warm, final, epochs), np.ones(total - epochs) * final))
    assert [teacher_temperature(e, warm, final, epochs) for e in range(total)] == pytest.approx(schedule.tolist())
    assert teacher_temperature(0, warm, final, 1) == warm and teacher_temperature(1, warm, final, 1) == final
    assert teacher_temperature(0, warm, final, 0) == final


def test_dino_head_last_layer_is_weight_normalised_with_fixed_norms():
    torch.manual_seed(0)
    head = DINOHead(16, 10, hidden=32, bottleneck=8, layers=3)
    x = torch.randn(4, 16)
    bottleneck = F.normalize(head.mlp(x), dim=1)
    prototypes = F.normalize(head.last_layer.weight_v, dim=1)
    assert torch.allclose(head(x), bottleneck @ prototypes.T, atol=1e-6)  # cosines: |logit| <= 1
    assert head(x).abs().max() <= 1 + 1e-6
    assert not head.last_layer.weight_g.requires_grad
    assert DINOHead(16, 10, hidden=32, bottleneck=8, norm_last_layer=False).last_layer.weight_g.requires_grad
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2


# ---- MoCo v3 -----------------------------------------------------------------------------------------------------------
def official_mocov3(q1, q2, k1, k2, T):
    """The official moco/builder.py contrastive_loss (one process: the gathered keys are the keys)."""
    def contrastive_loss(q, k):
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        logits = torch.einsum("nc,mc->nm", [q, k]) / T
        return torch.nn.CrossEntropyLoss()(logits, torch.arange(logits.shape[0])) * (2 * T)

    return contrastive_loss(q1, k2) + contrastive_loss(q2, k1)


def test_mocov3_matches_the_official_code():
    q1, q2, k1, k2 = (rand(9, 7, seed=s) for s in range(4))
    for t in (0.2, 1.0):
        close(mocov3_loss(q1, q2, k1, k2, t), official_mocov3(q1, q2, k1, k2, t))


def test_mocov3_hand_made_case_and_stop_gradient():
    """Orthonormal keys equal to their queries: logits 1/t on the diagonal, 0 elsewhere."""
    n, t = 4, 0.5
    eye = torch.eye(n, dtype=torch.float64)
    expected = 2 * (-math.log(math.exp(1 / t) / (math.exp(1 / t) + (n - 1)))) * 2 * t
    close(mocov3_loss(eye, eye, eye, eye, t), expected)
    q, k = rand(4, 3, seed=1, grad=True), rand(4, 3, seed=2, grad=True)
    mocov3_loss(q, q, k, k).backward()
    assert q.grad is not None and k.grad is None


# ---- NNCLR -------------------------------------------------------------------------------------------------------------
def reference_nnclr(z1, z2, p1, p2, support, t):
    """The paper's L_i, term by term: the nearest neighbour by cosine (a loop over the support set), then
    -log(exp(nn_i . p_i / t) / sum_k exp(nn_i . p_k / t)); the mean of both directions."""
    def nn(z):
        rows = []
        for zi in z:
            sims = [float(F.cosine_similarity(zi, q, dim=0)) for q in support]
            rows.append(support[max(range(len(sims)), key=sims.__getitem__)])
        return torch.stack(rows)

    def direction(nn_z, p):
        nn_z, p = F.normalize(nn_z, dim=1), F.normalize(p, dim=1)
        terms = [-torch.log(torch.exp(nn_z[i] @ p[i] / t) / sum(torch.exp(nn_z[i] @ p[k] / t) for k in range(len(p))))
                 for i in range(len(p))]
        return sum(terms) / len(terms)

    return (direction(nn(z1), p2) + direction(nn(z2), p1)) / 2


def test_nnclr_matches_the_paper_formula():
    support = F.normalize(rand(20, 5, seed=9), dim=1)
    z1, z2, p1, p2 = (rand(6, 5, seed=s) for s in range(4))
    close(nnclr_loss(z1, z2, p1, p2, support, 0.2), reference_nnclr(z1, z2, p1, p2, support, 0.2))


def test_nnclr_nearest_neighbour_is_the_support_row_of_highest_cosine():
    support = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]]), dim=1)
    z = torch.tensor([[10.0, 0.1], [0.0, -3.0], [0.5, 0.9], [-0.1, 5.0]])  # scale must not matter, only direction
    got = nearest_neighbour(z, support)
    assert torch.equal(got, support[[0, 0, 3, 1]]) or torch.equal(got, support[[0, 2, 3, 1]])
    assert torch.equal(got[0], support[0]) and torch.equal(got[2], support[3]) and torch.equal(got[3], support[1])


# ---- SwAV --------------------------------------------------------------------------------------------------------------
def official_sinkhorn(out, epsilon, iterations):
    """The official distributed_sinkhorn on one process."""
    Q = torch.exp(out / epsilon).t()
    B, K = Q.shape[1], Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def official_swav(scores, queue, temperature, epsilon, iterations, crops_for_assign=(0, 1)):
    """The official train() loss: queue scores stacked in front, the codes of the last bs rows."""
    bs, loss = scores[0].shape[0], 0
    for i, crop_id in enumerate(crops_for_assign):
        out = scores[crop_id]
        if queue is not None:
            out = torch.cat((queue[i], out))
        q = official_sinkhorn(out, epsilon, iterations)[-bs:]
        subloss = 0
        for v in [v for v in range(len(scores)) if v != crop_id]:
            subloss -= torch.mean(torch.sum(q * F.log_softmax(scores[v] / temperature, dim=1), dim=1))
        loss += subloss / (len(scores) - 1)
    return loss / len(crops_for_assign)


def test_sinkhorn_gives_equipartitioned_codes():
    scores = F.normalize(rand(64, 8, seed=5), dim=1)
    q = sinkhorn(scores, epsilon=0.05, iterations=50)
    close(q.sum(dim=1), torch.ones(64), rtol=1e-8)  # every sample's codes sum to 1
    close(q.sum(dim=0), torch.full((8,), 64 / 8), rtol=1e-3)  # every prototype gets B/K of the batch
    close(sinkhorn(scores, 0.05, 3), official_sinkhorn(scores.clone(), 0.05, 3))


@pytest.mark.parametrize("with_queue", [False, True])
def test_swav_matches_the_official_code_and_lightly(with_queue):
    k, b = 10, 6
    scores = [F.normalize(rand(b, k, seed=40 + v), dim=1) for v in range(5)]  # 2 global + 3 local crops
    queue = [F.normalize(rand(12, k, seed=50 + i), dim=1) for i in range(2)] if with_queue else None
    ours = swav_loss(scores, queue, temperature=0.1, epsilon=0.05, iterations=3)
    close(ours, official_swav(scores, queue, 0.1, 0.05, 3))
    lightly = lightly_loss("swav_loss").SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)
    close(ours, lightly(scores[:2], scores[2:], queue))


def test_swav_codes_carry_no_gradient():
    """The gradient is that of the swapped prediction with the codes held constant (the official code computes
    them under no_grad)."""
    scores = [F.normalize(rand(4, 5, seed=v), dim=1).requires_grad_() for v in range(3)]
    swav_loss(scores).backward()
    fixed = [s.detach().clone().requires_grad_() for s in scores]
    codes = [official_sinkhorn(fixed[i].detach().clone(), 0.05, 3) for i in range(2)]
    ref = sum(sum(-(codes[i] * F.log_softmax(fixed[v] / 0.1, dim=1)).sum(dim=1).mean() for v in range(3) if v != i) / 2
              for i in range(2)) / 2
    ref.backward()
    for s, f in zip(scores, fixed):
        close(s.grad, f.grad)

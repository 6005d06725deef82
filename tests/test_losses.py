"""The four objectives, single process: contrastive (+HNs), distill (eq. 3-4), DTW-Align (eq. 5-7), MAM (eq. 9)."""

import pytest
import torch
import torch.nn.functional as F

from instraction import kernels
from instraction.losses import (
    ContrastiveLoss,
    DistillLoss,
    DTWAlignLoss,
    alignment_cost,
    hard_negative_margin,
    mam_loss,
    mam_loss_from_hidden,
    reverse_verbs_index,
    soft_cross_entropy,
)


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


# ------------------------------------------------------------------------------------------------ contrastive
def test_contrastive_is_symmetric_infonce():
    video, text, scale = _unit(5, 8, seed=1), _unit(5, 8, seed=2), torch.tensor(10.0, dtype=torch.float64)
    logits = scale * video @ text.t()
    labels = torch.arange(5)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    assert torch.allclose(ContrastiveLoss()(video, text, scale), expected.float(), atol=1e-6)


def test_hard_negative_equal_to_positive_raises_the_loss_and_absent_ones_do_nothing():
    text, scale = _unit(4, 8, seed=2).float(), torch.tensor(10.0)
    video = F.normalize(text + 0.1 * _unit(4, 8, seed=1).float(), dim=-1)  # a model that already matches well
    neg = _unit(4, 2, 8, seed=3).float()
    loss = ContrastiveLoss()
    plain = loss(video, text, scale)
    absent = loss(video, text, scale, neg, torch.zeros(4, 2, dtype=torch.bool))
    assert torch.allclose(absent, plain, atol=1e-6)
    copy = neg.clone()
    copy[0, 0] = text[0]  # clip 0's negative is its own positive caption
    mask = torch.zeros(4, 2, dtype=torch.bool)
    mask[0, 0] = True
    hard = loss(video, text, scale, copy, mask)
    # Only clip 0's v2t row changes: its positive now shares the softmax with an equal column (CE + ~log 2),
    # averaged over 4 rows and 2 directions.
    log2_share = torch.log(torch.tensor(2.0)).item() / 8
    assert 0.5 * log2_share < (hard - plain).item() <= log2_share + 1e-5
    margin, share = hard_negative_margin(video, text, copy, mask)
    assert abs(margin.item()) < 1e-6 and share.item() == pytest.approx(0.25)


def test_contrastive_gradient_reaches_the_logit_scale_finite_with_absent_negatives():
    scale = torch.tensor(5.0, requires_grad=True)
    mask = torch.tensor([[True, False], [False, False], [True, True], [False, True]])
    neg = _unit(4, 2, 8, seed=3).float()
    ContrastiveLoss()(_unit(4, 8, seed=1).float(), _unit(4, 8, seed=2).float(), scale, neg, mask).backward()
    assert torch.isfinite(scale.grad) and scale.grad != 0


# ---------------------------------------------------------------------------------------------------- distill
def _distill_inputs(b=5, e=8):
    student = _unit(b, e, seed=1).float().requires_grad_()
    teacher = _unit(b, e, seed=2).float().requires_grad_()
    text = _unit(b, e, seed=3).float().requires_grad_()
    return student, teacher, text, torch.tensor(8.0)


def test_distill_is_cross_entropy_at_alpha_zero():
    student, teacher, text, scale = _distill_inputs()
    has = torch.tensor([True, False, True, True, False])
    distill, _ = DistillLoss(alpha=0.0).terms(student, teacher, text, scale, has)
    logits, labels = scale * student @ text.t(), torch.arange(5)
    expected = F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)
    assert torch.allclose(distill, expected, atol=1e-6)


def test_distill_matches_eq3_and_no_gradient_reaches_the_teacher_through_targets():
    student, teacher, text, scale = _distill_inputs()
    has = torch.ones(5, dtype=torch.bool)
    alpha = 0.3
    distill, teacher_ce = DistillLoss(alpha).terms(student, teacher, text, scale, has)
    labels = torch.arange(5)

    def single(s, st):  # eq. 3 written out
        logp = F.log_softmax(s, -1)
        return (-(1 - alpha) * logp[labels, labels] - alpha * (st.softmax(-1) * logp).sum(-1)).mean()

    expected = single(scale * student @ text.t(), scale * teacher @ text.t()) + single(
        scale * text @ student.t(), scale * text @ teacher.t())
    assert torch.allclose(distill, expected, atol=1e-5)
    distill.backward()
    assert teacher.grad is None or torch.count_nonzero(teacher.grad) == 0
    assert student.grad.abs().sum() > 0
    # The teacher's own InfoNCE is what trains it.
    teacher_ce.backward()
    assert teacher.grad.abs().sum() > 0


def test_distill_falls_back_to_cross_entropy_without_teacher_and_stays_finite():
    student, teacher, text, scale = _distill_inputs()
    none = torch.zeros(5, dtype=torch.bool)
    distill, teacher_ce = DistillLoss(alpha=0.7).terms(student, teacher, text, scale, none)
    ce, _ = DistillLoss(alpha=0.0).terms(student, teacher, text, scale, none)
    assert torch.allclose(distill, ce) and teacher_ce.item() == 0.0
    (distill + teacher_ce).backward()
    for t in (student, teacher, text):
        assert t.grad is None or torch.isfinite(t.grad).all()
    # A row's soft target ignores teacher-less columns entirely.
    rows = soft_cross_entropy(torch.zeros(1, 3), torch.tensor([[0.0, 50.0, float("-inf")]]), torch.tensor([0]),
                              1.0, torch.tensor([True]))
    assert torch.allclose(rows, torch.log(torch.tensor([3.0])), atol=1e-5)


# ---------------------------------------------------------------------------------------------------- DTW
def _ordered_pair(k=4, m=2, e=6):
    """Action tokens that follow the verbs in order: tokens [0,k/m) == verb 0, next block == verb 1, ..."""
    verbs = torch.eye(e)[:m].unsqueeze(0).double()
    tokens = verbs[0].repeat_interleave(k // m, dim=0).unsqueeze(0).clone()
    return tokens, verbs


def test_order_hinge_is_zero_with_zero_gradient_once_reversal_is_worse_by_margin():
    tokens, verbs = _ordered_pair()
    tokens.requires_grad_()
    loss = DTWAlignLoss(gamma=0.01, margin=0.1, backend="torch")
    align, order, valid = loss.terms(tokens, verbs, torch.tensor([2]))
    assert bool(valid[0])
    reversed_align, _, _ = loss.terms(tokens, verbs.flip(1), torch.tensor([2]))
    assert reversed_align[0] - align[0] > 0.1  # reversed order costs more than the margin ...
    assert order[0].item() == 0.0  # ... so the hinge is exactly 0
    order.sum().backward()
    assert torch.count_nonzero(tokens.grad) == 0


def test_order_hinge_equals_margin_when_order_is_invisible():
    tokens = torch.ones(1, 4, 6, dtype=torch.float64)  # every token alike: forward and reversed cost the same
    verbs = _unit(1, 3, 6, seed=4)
    _, order, _ = DTWAlignLoss(gamma=0.1, margin=0.25, backend="torch").terms(tokens, verbs, torch.tensor([3]))
    assert order.item() == pytest.approx(0.25, abs=1e-6)


def test_align_is_normalised_soft_dtw_and_padding_verbs_do_not_matter():
    tokens, verbs3 = _unit(2, 5, 6, seed=5), _unit(2, 3, 6, seed=6)
    count = torch.tensor([2, 3])
    verbs5 = torch.cat([verbs3, _unit(2, 2, 6, seed=7)], dim=1)  # two more padding slots of garbage
    verbs3_garbage = verbs3.clone()
    verbs3_garbage[0, 2] = _unit(6, seed=8)  # clip 0 has 2 verbs: its slot 2 is padding
    loss = DTWAlignLoss(gamma=0.1, margin=0.1, backend="torch")
    ref = loss(tokens, verbs3, count)
    assert torch.allclose(loss(tokens, verbs5, count), ref)
    assert torch.allclose(loss(tokens, verbs3_garbage, count), ref)
    align, _, _ = loss.terms(tokens, verbs3, count)
    cost = alignment_cost(tokens, verbs3)
    direct = kernels.soft_dtw(cost[1:, :, :3], 0.1, backend="torch") / (5 + 3)
    assert torch.allclose(align[1:], direct.to(align.dtype))


def test_dtw_skips_clips_with_fewer_than_two_verbs():
    tokens, verbs = _unit(3, 4, 6, seed=9).requires_grad_(), _unit(3, 3, 6, seed=10)
    loss = DTWAlignLoss(gamma=0.1, margin=0.1, backend="torch")
    value = loss(tokens, verbs, torch.tensor([0, 1, 0]))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    mixed = loss(tokens, verbs, torch.tensor([0, 1, 3]))
    only = loss(tokens[2:], verbs[2:], torch.tensor([3]))
    assert torch.allclose(mixed, only)


def test_reverse_index_reverses_only_real_verbs():
    idx = reverse_verbs_index(torch.tensor([0, 1, 3]), 4)
    assert idx.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [2, 1, 0, 3]]


# ---------------------------------------------------------------------------------------------------- MAM
def test_mam_scores_only_the_next_token_of_labelled_positions():
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.full((2, 5), -100)
    labels[0, 2], labels[1, 4] = 3, 6  # predicted from positions 1 and 3
    expected = (F.cross_entropy(logits[0, 1], torch.tensor(3)) + F.cross_entropy(logits[1, 3], torch.tensor(6))) / 2
    assert torch.allclose(mam_loss(logits, labels), expected)
    other = logits.clone()
    other[0, [0, 2, 3, 4]] += 5.0 * torch.randn(4, 7)  # every position that predicts no label
    other[1, [0, 1, 2, 4]] -= 3.0
    assert torch.allclose(mam_loss(other, labels), expected)
    other[0, 1] += torch.randn(7)
    assert not torch.allclose(mam_loss(other, labels), expected)


def test_mam_from_hidden_equals_full_logits_and_is_zero_without_labels():
    hidden = torch.randn(2, 5, 4, requires_grad=True)
    head = torch.nn.Linear(4, 9, bias=False)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 2, 8
    assert torch.allclose(mam_loss_from_hidden(hidden, labels, head), mam_loss(head(hidden), labels), atol=1e-6)
    none = torch.full((2, 5), -100)
    for value in (mam_loss_from_hidden(hidden, none, head), mam_loss(head(hidden), none)):
        assert value.item() == 0.0 and value.requires_grad
        value.backward()

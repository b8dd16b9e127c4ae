"""The training step of Algorithm 1 (kd2m.train), on tiny networks and random images."""

import copy

import pytest
import torch

from kd2m.metrics import get_metric
from kd2m.models import build_model, make_projector
from kd2m.train import Distiller, make_optimizer, train_epoch, train_step

CPU = torch.device("cpu")


def nets(seed=0):
    torch.manual_seed(seed)
    student = build_model("resnet8", 10, stem="cifar", width=4)  # 16-d features
    teacher = build_model("resnet8", 10, stem="cifar", width=8)  # 32-d features
    projector = make_projector(student.feature_dim, teacher.feature_dim)
    return student, teacher, projector


def batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10


def step(student, distiller, x, y, lr=0.1):
    params = list(student.parameters())
    if distiller is not None and distiller.projector is not None:
        params += list(distiller.projector.parameters())
    opt, _ = make_optimizer(params, lr=lr, momentum=0.0, weight_decay=0.0, epochs=1, lr_min=0.0)
    student.train()
    return train_step(student, x, y, opt, device=CPU, distiller=distiller)


def test_teacher_weights_and_batchnorm_buffers_do_not_change():
    student, teacher, projector = nets()
    teacher.train()  # even when handed over in train mode, the distiller freezes it
    before = copy.deepcopy(teacher.state_dict())
    d = Distiller(teacher=teacher, metric=get_metric("wasserstein"), lam=0.5, projector=projector)
    x, y = batch()
    for _ in range(2):
        step(student, d, x, y)
    after = teacher.state_dict()
    assert any("running_mean" in k for k in after)
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_projector_trains_with_lambda_and_not_without():
    x, y = batch()
    for lam, changes in ((0.5, True), (0.0, False)):
        student, teacher, projector = nets()
        before = copy.deepcopy(projector.state_dict())
        d = Distiller(
            teacher=teacher, metric=get_metric("wasserstein"), lam=lam, projector=projector
        )
        _, _, dist = step(student, d, x, y)
        assert dist is not None and dist.item() > 0  # recorded at lambda = 0 too
        moved = any(not torch.equal(v, projector.state_dict()[k]) for k, v in before.items())
        assert moved == changes, lam


def _grads(lam, metric="gaussian_wasserstein"):
    student, teacher, projector = nets()
    d = (
        None
        if lam is None
        else Distiller(teacher=teacher, metric=get_metric(metric), lam=lam, projector=projector)
    )
    step(student, d, *batch(), lr=0.0)  # lr 0: the step leaves the gradients, moves nothing
    return torch.cat([p.grad.flatten() for p in student.parameters()])


def test_gradient_is_ce_plus_lambda_times_distance():
    g_ce = _grads(None)
    g_zero = _grads(0.0)
    g1, g2 = _grads(0.25), _grads(0.5)
    torch.testing.assert_close(g_zero, g_ce)  # lambda = 0: the distance adds no gradient
    assert (g1 - g_ce).norm() > 1e-4 * g_ce.norm()
    torch.testing.assert_close(g2 - g_ce, 2 * (g1 - g_ce), rtol=1e-3, atol=1e-6)


def test_logit_metric_and_student_probabilities_reach_the_metric():
    calls = {}

    class Spy:
        def __init__(self, inputs, needs):
            self.inputs, self.needs_student_probs, self.needs_teacher_probs = inputs, needs, needs

        def __call__(self, zs, zt, y=None, *, ps=None, pt=None, validate=True):
            calls.update(shape=tuple(zs.shape), ps=ps, pt=pt, validate=validate)
            return (zs - zt).pow(2).mean()

    student, teacher, projector = nets()
    x, y = batch()
    step(student, Distiller(teacher=teacher, metric=Spy("logits", False), lam=1.0), x, y)
    assert calls["shape"] == (16, 10) and calls["ps"] is None and calls["pt"] is None
    assert calls["validate"] is False
    step(
        student,
        Distiller(teacher=teacher, metric=Spy("features", True), lam=1.0, projector=projector),
        x,
        y,
    )
    assert calls["shape"] == (16, 32)
    torch.testing.assert_close(calls["ps"].sum(1), torch.ones(16))
    torch.testing.assert_close(calls["pt"].sum(1), torch.ones(16))


class _Batches:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return 1

    def epoch(self, epoch):
        yield self.x, self.y


class _NaN:
    inputs, needs_student_probs, needs_teacher_probs = "features", False, False

    def __call__(self, zs, zt, y=None, *, ps=None, pt=None, validate=True):
        return zs.sum() * float("nan")


def test_non_finite_loss_raises_at_the_end_of_the_epoch():
    student, teacher, projector = nets()
    opt, _ = make_optimizer(
        student.parameters(), lr=0.1, momentum=0.0, weight_decay=0.0, epochs=1, lr_min=0.0
    )
    d = Distiller(teacher=teacher, metric=_NaN(), lam=1.0, projector=projector)
    with pytest.raises(FloatingPointError, match="non-finite.*distillation=nan"):
        train_epoch(student, _Batches(*batch()), 0, opt, device=CPU, distiller=d, progress=False)


class _Spy(torch.nn.Module):
    """A network whose forward records whether CPU autocast is on, and in which dtype."""

    def __init__(self, net, seen):
        super().__init__()
        self.net, self.seen = net, seen

    def forward(self, x):
        on = torch.is_autocast_enabled("cpu")
        self.seen.append(torch.get_autocast_dtype("cpu") if on else None)
        return self.net(x)


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16", torch.bfloat16), ("fp32", None), ("auto", None)]
)
def test_precision_reaches_the_forward_passes(precision, dtype):
    from kd2m.train import evaluate

    seen: list = []
    student, teacher, projector = nets()
    s, t = _Spy(student, seen), _Spy(teacher, seen)
    d = Distiller(teacher=t, metric=get_metric("wasserstein"), lam=0.5, projector=projector)
    x, y = batch()
    opt, _ = make_optimizer(
        list(s.parameters()) + list(projector.parameters()),
        lr=0.1,
        momentum=0.0,
        weight_decay=0.0,
        epochs=1,
        lr_min=0.0,
    )
    _, ce, dist = train_step(s, x, y, opt, device=CPU, distiller=d, precision=precision)
    assert torch.isfinite(ce) and torch.isfinite(dist) and dist.dtype == torch.float32
    evaluate(s, _Batches(x, y), device=CPU, precision=precision)
    assert seen == [dtype] * 3  # student and teacher in the step, student in evaluate
    assert not torch.is_autocast_enabled("cpu")  # the context ends with the step


def test_precision_names_the_bad_value_and_resolves_per_device():
    from kd2m.train import resolve_precision

    with pytest.raises(ValueError, match=r"precision='fp16'.*'auto', 'bf16', 'fp32'"):
        train_step(nets()[0], *batch(), None, device=CPU, precision="fp16")
    cuda = torch.device("cuda")  # only its type is read: no GPU needed
    assert [resolve_precision(p, cuda) for p in ("auto", "bf16", "fp32")] == [
        "bf16",
        "bf16",
        "fp32",
    ]
    assert [resolve_precision(p, CPU) for p in ("auto", "bf16", "fp32")] == [
        "fp32",
        "bf16",
        "fp32",
    ]

"""Layers and networks from PyTorch: ``from_torch`` against ``model(x)``, ``layer_spectra`` against dense SVDs."""

from __future__ import annotations

import json

import numpy as np
import pytest

import structops
from structops.testing import assert_adjoint

torch = pytest.importorskip("torch")
nn = torch.nn


def _linear_part(model, x):
    """``model(x) - model(0)`` in float64 (the linear part of an affine model)."""
    with torch.no_grad():
        xt = torch.from_numpy(x)
        return (model(xt) - model(torch.zeros_like(xt))).numpy()


def _bn(c, seed):
    bn = nn.BatchNorm2d(c)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.normal_(generator=g)
        bn.running_var.uniform_(0.5, 2.0, generator=g)
        bn.weight.normal_(generator=g)
        bn.bias.normal_(generator=g)
    return bn


MODELS = {
    "conv-bn-pool": lambda: nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), _bn(8, 1), nn.AvgPool2d(2), nn.Conv2d(8, 4, 3, stride=2, padding="valid"),
        nn.Flatten(), nn.Linear(4 * 2 * 2, 5)),
    "groups-reflect-same": lambda: nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect", groups=2),
        nn.Conv2d(8, 8, 4, padding="same", groups=8, bias=False),
        nn.Conv2d(8, 6, (3, 2), padding=(1, 0), padding_mode="replicate", dilation=(2, 1)),
        nn.Conv2d(6, 6, 3, padding=1, padding_mode="circular")),
    "decoder": lambda: nn.Sequential(
        nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1), _bn(6, 2),
        nn.ConvTranspose2d(6, 2, 4, stride=2, padding=1, groups=2), nn.Identity(),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)),
}


@pytest.mark.parametrize("name", ["conv-bn-pool", "groups-reflect-same", "decoder"])
@pytest.mark.parametrize("fuse", [False, True])
def test_from_torch_reproduces_the_model(name, fuse):
    torch.manual_seed(0)
    model = MODELS[name]().double().eval()
    shape = {"conv-bn-pool": (3, 12, 12), "groups-reflect-same": (4, 9, 10), "decoder": (4, 5, 6)}[name]
    op = structops.from_torch(model, shape, fuse_batchnorm=fuse)
    x = np.random.default_rng(1).standard_normal((3,) + shape)
    want = _linear_part(model, x)
    got = (op @ x.reshape(3, -1).T).T.reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * max(1.0, np.abs(want).max()))
    assert tuple(op.dims) == shape and tuple(op.dimsd) == want.shape[1:]
    assert_adjoint(op)


def test_from_torch_1d_and_3d():
    torch.manual_seed(1)
    m1 = nn.Sequential(nn.Conv1d(2, 3, 5, stride=2, padding=2, padding_mode="reflect"),
                       nn.ConvTranspose1d(3, 2, 3, stride=3), nn.AvgPool1d(2)).double().eval()
    x = np.random.default_rng(2).standard_normal((2, 2, 11))
    op = structops.from_torch(m1, (2, 11))
    np.testing.assert_allclose((op @ x.reshape(2, -1).T).T, _linear_part(m1, x).reshape(2, -1), rtol=0, atol=1e-12)
    m3 = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1, padding_mode="replicate"), nn.BatchNorm3d(2)).double().eval()
    x = np.random.default_rng(3).standard_normal((2, 1, 4, 5, 3))
    op = structops.from_torch(m3, (1, 4, 5, 3))
    np.testing.assert_allclose((op @ x.reshape(2, -1).T).T, _linear_part(m3, x).reshape(2, -1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("model, shape", [
    (lambda: _bn(3, 4), (3, 4, 5)),  # one diagonal: its own dims are flat
    (lambda: nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12)), (3, 2, 2)),
    (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.Flatten()), (2, 5, 4)),
    (lambda: nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(8, 3)), (2, 2, 2)),
], ids=["batchnorm", "flatten-batchnorm1d", "conv-flatten", "flatten-linear"])
def test_one_operator_between_flattenings_keeps_its_own_shapes(model, shape):
    torch.manual_seed(4)
    m = model().double().eval()
    if isinstance(m, nn.Sequential) and isinstance(m[-1], nn.BatchNorm1d):
        with torch.no_grad():
            m[-1].running_var.uniform_(0.5, 2.0)
            m[-1].weight.normal_()
    op = structops.from_torch(m, shape)
    x = np.random.default_rng(5).standard_normal((3,) + shape)
    want = _linear_part(m, x)
    np.testing.assert_allclose((op @ x.reshape(3, -1).T).T, want.reshape(3, -1), rtol=0, atol=1e-12)
    assert tuple(op.dims) == shape and tuple(op.dimsd) == want.shape[1:]
    np.testing.assert_allclose(op @ x[0], want[0].reshape(-1) if len(want.shape) == 2 else want[0], atol=1e-12)
    assert_adjoint(op)


@pytest.mark.parametrize("pool, shape, structured", [
    (lambda: nn.AdaptiveAvgPool2d(1), (3, 5, 4), True),
    (lambda: nn.AdaptiveAvgPool2d((2, None)), (2, 6, 3), True),
    (lambda: nn.AdaptiveAvgPool2d((3, 2)), (2, 7, 5), False),  # windows of varying size that overlap
    (lambda: nn.AdaptiveAvgPool2d((5, 3)), (1, 3, 4), False),  # more outputs than inputs on an axis
    (lambda: nn.AdaptiveAvgPool1d(4), (2, 10), False),
    (lambda: nn.AdaptiveAvgPool3d((2, 1, 3)), (2, 4, 3, 7), False),
], ids=["global", "none-axis", "overlapping", "upsampling", "1d", "3d"])
def test_adaptive_average_pools_are_torch_s_windows(pool, shape, structured):
    m = pool().double()
    op = structops.from_torch(m, shape)
    assert isinstance(op, structops.ConvND) == structured
    x = np.random.default_rng(6).standard_normal((2,) + shape)
    want = _linear_part(m, x)
    np.testing.assert_allclose((op @ x.reshape(2, -1).T).T, want.reshape(2, -1), rtol=0, atol=1e-14)
    assert tuple(op.dimsd) == want.shape[1:]
    assert_adjoint(op)
    assert structops.from_torch(m, shape, dtype=np.float32).dtype == np.float32


@pytest.mark.parametrize("pool, shape", [
    (lambda: nn.AvgPool2d(2, ceil_mode=True), (2, 5, 5)),
    (lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True), (2, 6, 7)),
    (lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), (2, 6, 7)),
    (lambda: nn.AvgPool2d((3, 2), stride=(2, 3), padding=(1, 1), ceil_mode=True, divisor_override=5), (1, 8, 7)),
    (lambda: nn.AvgPool1d(4, stride=3, padding=2, ceil_mode=True), (2, 10)),
    (lambda: nn.AvgPool3d(2, stride=(2, 1, 3), ceil_mode=True, count_include_pad=False), (2, 3, 4, 5)),
    (lambda: nn.AvgPool2d(3, stride=3, ceil_mode=True), (1, 3, 3)),  # no partial window: as the convolution
], ids=["2x2", "padded", "padded-inside-count", "divisor", "1d", "3d", "exact"])
def test_average_pools_with_ceil_mode_have_torch_s_partial_windows(pool, shape):
    m = pool().double()
    op = structops.from_torch(m, shape)
    x = np.random.default_rng(9).standard_normal((2,) + shape)
    want = _linear_part(m, x)
    assert tuple(op.dimsd) == want.shape[1:]
    np.testing.assert_allclose((op @ x.reshape(2, -1).T).T, want.reshape(2, -1), rtol=0, atol=1e-14)
    assert_adjoint(op)


def test_a_classifier_head_with_an_adaptive_pool():
    torch.manual_seed(7)
    head = nn.Sequential(nn.Conv2d(2, 4, 3), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(4, 3)).double()
    op = structops.from_torch(head, (2, 7, 6))
    x = np.random.default_rng(8).standard_normal((3, 2, 7, 6))
    np.testing.assert_allclose((op @ x.reshape(3, -1).T).T, _linear_part(head, x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="output_size"):
        structops.from_torch(nn.AdaptiveAvgPool2d((1, 1, 1)), (2, 4, 4))


def test_every_layer_spectrum_matches_a_dense_svd():
    torch.manual_seed(2)
    model = MODELS["groups-reflect-same"]().double().eval()
    shape = (4, 6, 7)
    for m in model:
        op, out = structops.interop.layer_operator(m, shape)
        A = op @ np.eye(op.shape[1])
        ref = np.linalg.svd(A, compute_uv=False)
        np.testing.assert_allclose(structops.singular_values(op), ref, rtol=0, atol=1e-11 * ref[0])
        shape = out


def test_unsupported_modules_are_named():
    with pytest.raises(NotImplementedError, match="ReLU is not one of the linear modules"):
        structops.from_torch(nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU()), (1, 8, 8))
    bn = nn.BatchNorm2d(2).train()
    with pytest.raises(NotImplementedError, match="training mode"):
        structops.from_torch(bn, (2, 4, 4))
    with pytest.raises(NotImplementedError, match="nn.Flatten"):
        structops.from_torch(nn.Linear(4, 2), (1, 2, 2))
    with pytest.raises(NotImplementedError, match="track_running_stats=False"):
        structops.from_torch(nn.BatchNorm2d(2, track_running_stats=False).eval(), (2, 4, 4))


@pytest.mark.parametrize("module, shape, match", [
    (lambda: nn.Conv2d(3, 2, 3), (4, 6, 6), "Conv2d has in_channels=3; the input shape"),
    (lambda: nn.Conv2d(3, 2, 3), (3, 6), r"Conv2d takes one sample of shape \(c, h, w\)"),
    (lambda: nn.Conv1d(2, 2, 3), (2, 6, 6), r"Conv1d takes one sample of shape \(c, n\)"),
    (lambda: nn.ConvTranspose3d(2, 2, 3), (3, 4, 4, 4), "ConvTranspose3d has in_channels=2"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(10, 2)), (2, 2, 2), "Linear has in_features=10"),
    (lambda: nn.BatchNorm2d(3).eval(), (4, 4, 4), "BatchNorm2d has num_features=3"),
    (lambda: nn.BatchNorm1d(3).eval(), (3, 4, 4), r"BatchNorm1d takes one sample of shape \(c, n\) or \(c,\)"),
    (lambda: nn.LazyConv2d(2, 3), (3, 6, 6), "lazy module"),
], ids=["channels", "axes", "axes-1d", "transposed", "features", "batchnorm", "batchnorm1d-axes", "lazy"])
def test_an_input_shape_that_is_not_the_module_s_is_named(module, shape, match):
    with pytest.raises(ValueError, match=match):
        structops.from_torch(module(), shape)


def test_layer_spectra_of_a_small_network(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1,
                                                                            groups=2),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()
    rep = structops.layer_spectra(model, (2, 8, 8), progress=False)
    assert [r.name for r in rep.layers] == ["0", "2", "5"]
    shapes = [(2, 8, 8), (4, 8, 8), (64,)]
    for r, shape, m in zip(rep.layers, shapes, [model[0], model[2], model[5]]):
        assert r.in_shape == shape
        op, _ = structops.interop.layer_operator(m, shape)
        ref = np.linalg.svd(op @ np.eye(op.shape[1]), compute_uv=False)
        assert r.sigma_max == pytest.approx(ref[0], rel=1e-10)
        assert r.sigma_min_status == "certified"
        assert r.sigma_min == pytest.approx(ref[min(op.shape) - 1], rel=1e-8, abs=1e-12 * ref[0])
    assert rep.lipschitz_bound == pytest.approx(np.prod([r.sigma_max for r in rep.layers]))
    # beyond the limit: a certified upper bound of sigma_min, a lower bound of cond
    rep2 = structops.layer_spectra(model, (2, 8, 8), smallest_limit=0, progress=False)
    for r, r2 in zip(rep.layers, rep2.layers):
        if r2.sigma_min_status == "certified":  # the exact reductions leave small blocks (the strided layer)
            assert r2.sigma_min == pytest.approx(r.sigma_min, rel=1e-8)
            continue
        assert r2.sigma_min_status.startswith("upper bound") and r2.sigma_min >= r.sigma_min * (1 - 1e-12)
        assert r2.cond_status == "lower bound" and r2.cond <= r.cond * (1 + 1e-12)
    assert any(r.sigma_min_status.startswith("upper bound") for r in rep2.layers)
    rep.write_json(tmp_path / "l.json")
    rep.write_csv(tmp_path / "l.csv")
    rep.plot(tmp_path / "l.png")
    data = json.loads((tmp_path / "l.json").read_text())
    assert len(data["layers"]) == 3 and (tmp_path / "l.png").stat().st_size > 0
    assert "sigma_max" in rep.table()


def test_a_layer_singular_to_working_precision_reports_a_lower_bound_of_cond():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    V, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    model = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.Conv2d(3, 3, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy((U @ np.diag([1.0, 1e-8, 1e-16]) @ V.T).reshape(3, 3, 1, 1)))
        model[1].weight.zero_()
    rep = structops.layer_spectra(model, (3, 5, 5), progress=False)
    r, z = rep.layers
    assert r.sigma_min_status == "certified" and r.sigma_min <= r.sigma_min_error
    assert r.cond_status == "lower bound" and 1e15 <= r.cond <= 1e16 * (1 + 1e-6)  # the true cond is 1e16
    assert z.sigma_max == 0 and z.cond == np.inf and z.cond_status == "certified"  # the zero layer, exactly
    assert ">=" in rep.table().splitlines()[2]


def test_layers_command_on_a_small_resnet(tmp_path, capsys):
    from structops.apps.cli import main

    assert main(["layers", "--model", "resnet18", "--size", "16", "--smallest-limit", "3000",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "layer4.1.conv2" in out and "product of the layers' sigma_max" in out
    data = json.loads((tmp_path / "layers.json").read_text())
    assert len(data["layers"]) == 21  # 20 convolutions and the classifier


def test_the_from_torch_docstring_example():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AvgPool2d(2)).double()
    assert structops.from_torch(m, (3, 16, 16)).shape == (512, 768)

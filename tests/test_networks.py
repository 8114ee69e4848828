"""Networks, preconditioning and EMA: shapes, conditioning, sizes, EDM coefficients, the t → c_noise boundary."""
import copy
import math

import pytest
import torch
from torch import nn

import scoresde as sd
from scoresde.models.ema import EMA
from scoresde.models.networks import MLP, UNet, cifar10_unet, tiny_unet
from scoresde.models.preconditioning import C_NOISE, Preconditioned, edm_coefficients


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 1, 28, 28), (2, 3, 32, 32)])
@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_tiny_unet_shapes(shape, embedding):
    torch.manual_seed(0)
    net = tiny_unet(img_resolution=shape[-1], in_channels=shape[1], embedding=embedding)
    assert _count(net) < 60_000
    out = net(torch.randn(shape), torch.randn(shape[0]))
    assert out.shape == shape and torch.isfinite(out).all()


@pytest.mark.parametrize("embedding", ["fourier", "sinusoidal"])
def test_mlp_shapes(embedding):
    net = MLP(2, hidden=32, depth=2, embedding=embedding)
    out = net(torch.randn(5, 2), torch.randn(5))
    assert out.shape == (5, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("make", [lambda: MLP(2, hidden=32, depth=2, num_classes=3),
                                  lambda: tiny_unet(num_classes=3, init_zero=1.0)])
def test_class_conditioning(make):
    torch.manual_seed(0)
    net = make()
    x = torch.randn((2, 2) if isinstance(net, MLP) else (2, 1, 8, 8))
    c = torch.randn(2)
    out0, out1 = net(x, c, torch.tensor([0, 0])), net(x, c, torch.tensor([1, 1]))
    null, null_explicit = net(x, c, None), net(x, c, torch.tensor([3, 3]))
    assert (out0 - out1).abs().max() > 1e-3 * out0.abs().max()
    torch.testing.assert_close(null, null_explicit)
    assert (null - out0).abs().max() > 0
    with pytest.raises(ValueError):
        net(x, c, torch.tensor([4, 0]))  # beyond the null class


def test_unconditional_network_rejects_labels():
    with pytest.raises(ValueError):
        MLP(2, hidden=16)(torch.randn(2, 2), torch.randn(2), torch.tensor([0, 1]))


def test_cifar10_parameter_count():
    with torch.device("meta"):
        net = cifar10_unet()
    assert 35e6 <= _count(net) <= 60e6


@pytest.mark.parametrize("sigma", [0.002, 0.5, 3.0, 80.0])
def test_edm_coefficients_match_table_1(sigma):
    sd_ = 0.5
    c_skip, c_out, c_in, c_noise = (float(c) for c in edm_coefficients(torch.tensor([sigma], dtype=torch.float64)))
    assert c_skip == pytest.approx(sd_**2 / (sigma**2 + sd_**2), rel=1e-12)
    assert c_out == pytest.approx(sigma * sd_ / math.sqrt(sigma**2 + sd_**2), rel=1e-12)
    assert c_in == pytest.approx(1 / math.sqrt(sigma**2 + sd_**2), rel=1e-12)
    assert c_noise == pytest.approx(math.log(sigma) / 4, rel=1e-12)
    # unit-variance network input and training target (Karras et al. 2022, app. B.6)
    assert c_in**2 * (sd_**2 + sigma**2) == pytest.approx(1, rel=1e-12)
    assert c_out**2 == pytest.approx((1 - c_skip) ** 2 * sd_**2 + c_skip**2 * sigma**2, rel=1e-12)


class _Zero(nn.Module):
    def forward(self, x, c_noise, class_labels=None):
        return torch.zeros_like(x)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(), sd.EDMSDE()])
def test_edm_zero_network_gives_c_skip_x_hat(sde):
    pre = Preconditioned(_Zero(), "edm")
    x, t = torch.randn(4, 2, dtype=torch.float64), torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    sigma, s = sde.sigma(t), sde.s(t)
    c_skip = edm_coefficients(sigma)[0]
    expected = sd.append_dims(c_skip / s, 2) * x
    torch.testing.assert_close(pre.predict(x, t, sde), expected)
    assert pre.score_model(sde).prediction == "x0"


class _Spy(nn.Module):
    """Records what the network is given; returns a fixed function of its inputs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, c_noise, class_labels=None):
        self.calls.append(c_noise.clone())
        return 0.1 * x


@pytest.mark.parametrize("kind,c_noise", [("edm", None), ("eps", "ddpm"), ("x0", "ve"), ("v", "log")])
def test_network_sees_c_noise_not_t(kind, c_noise):
    sde, spy = sd.VPSDE(), _Spy()
    model = Preconditioned(spy, kind, c_noise=c_noise).score_model(sde)
    t = torch.tensor([0.2, 0.7])
    model.score(torch.randn(2, 2), t)
    expected = C_NOISE[c_noise or "log"](sde.sigma(t))
    torch.testing.assert_close(spy.calls[-1], expected)
    assert not torch.allclose(spy.calls[-1], t)
    if c_noise == "ddpm":  # 999·t for the default VP SDE
        torch.testing.assert_close(spy.calls[-1], 999 * t, rtol=1e-4, atol=1e-3)


class _ExactEps(nn.Module):
    """The exact ε of a testbed, computed from (x, c_noise) alone: σ = exp(4·c_noise) → t → exact score."""

    def __init__(self, testbed, sde):
        super().__init__()
        self.testbed, self.sde = testbed, sde

    def forward(self, x, c_noise, class_labels=None):
        t = self.sde.t_of_sigma(torch.exp(4 * c_noise.double())).to(x.dtype)
        return -sd.append_dims(self.sde.std(t), x.ndim) * self.testbed.score(x, t, self.sde)


def test_eps_head_with_exact_eps_samples_like_the_testbed():
    sde, testbed = sd.VPSDE(), sd.get_testbed("ring")
    pre = Preconditioned(_ExactEps(testbed, sde), "eps", c_noise="log")
    ours = sd.sample(pre.score_model(sde), "heun", 12, (64, 2), seed=0)
    exact = sd.sample(testbed.model(sde), "heun", 12, (64, 2), seed=0)
    torch.testing.assert_close(ours, exact, rtol=1e-3, atol=1e-3)


def test_gradients_flow_through_preconditioned_unet():
    torch.manual_seed(0)
    pre = Preconditioned(tiny_unet(), "edm")
    x0 = torch.randn(2, 1, 8, 8)
    sigma = torch.tensor([0.3, 5.0])
    loss = (pre(x0 + sd.append_dims(sigma, 4) * torch.randn_like(x0), sigma) - x0).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in pre.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert pre.net.conv_out.weight.grad.abs().sum() > 0
    assert set(pre.state_dict()) == {f"net.{k}" for k in pre.net.state_dict()}


class _Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.register_buffer("b", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


@pytest.mark.parametrize("decay,k", [(0.9, 7), (0.999, 50)])
def test_ema_constant_decay_is_exact(decay, k):
    m = _Scalar()
    ema = EMA(m, decay=decay)
    with torch.no_grad():
        m.w.fill_(1.0), m.b.fill_(1.0), m.count.fill_(5)
    for step in range(k):
        ema.update(m, step)
    assert float(ema.shadow["w"]) == pytest.approx(1 - decay**k, abs=1e-12)
    assert float(ema.shadow["b"]) == pytest.approx(1 - decay**k, abs=1e-12)
    assert int(ema.shadow["count"]) == 5


def test_ema_half_life_and_rampup():
    m = _Scalar()
    ema = EMA(m, half_life_kimg=0.01, batch_size=2)  # half-life 10 images = 5 steps
    with torch.no_grad():
        m.w.fill_(1.0)
    for step in range(5):
        ema.update(m, step)
    assert float(ema.shadow["w"]) == pytest.approx(0.5, abs=1e-12)
    ramp = EMA(_Scalar(), half_life_kimg=500, rampup_ratio=0.05, batch_size=512)
    assert ramp.beta(0) == 0.0  # the first update copies the model (EDM)
    assert ramp.beta(10) == pytest.approx(0.5 ** (512 / (10 * 512 * 0.05)))
    assert ramp.beta(10**6) == pytest.approx(0.5 ** (512 / 500_000))


def test_ema_state_dict_round_trip_and_copy_to():
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=1)
    before = copy.deepcopy(net.state_dict())
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    other = EMA(MLP(2, hidden=16, depth=1), decay=0.1)
    other.load_state_dict(copy.deepcopy(ema.state_dict()))
    assert other.decay == 0.5
    target = MLP(2, hidden=16, depth=1)
    other.copy_to(target)
    for k, v in target.state_dict().items():
        torch.testing.assert_close(v, ema.shadow[k])
    for name, p in target.named_parameters():
        torch.testing.assert_close(p, before[name] + 0.5)
    assert target(torch.randn(3, 2), torch.randn(3)).shape == (3, 2)


def test_unet_rejects_indivisible_sizes():
    with pytest.raises(ValueError):
        UNet(img_resolution=8, in_channels=1, model_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
             attn_resolutions=())(torch.randn(1, 1, 6, 6), torch.zeros(1))

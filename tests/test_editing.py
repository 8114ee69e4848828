"""Editing properties, with exact models where they exist (the ideal denoiser of the 8×8 digits, labelled by
digit, is an exact class-conditional image model) and tiny random U-Nets elsewhere.

* SDEdit at strength 0 returns the input; at a small strength the ideal denoiser returns the training image
  it started from; sample i does not depend on the batch.
* Inpainting (replacement and RePaint, several solvers) keeps the known pixels exactly; RePaint's schedule
  and its measured NFE agree.
* Anagram views are consistent: sampling (A, B) from V(x_T) gives V of sampling (B, A) from x_T.
* Hybrids with the same class on both bands are the conditional model; low + high = identity.
* Tweedie's one-step denoiser is the posterior mean: a posterior sample has twice its squared error.
* A blind single-σ denoiser trained with the Trainer ignores σ; forward-process views share their noise.
* Bad input: masks of the wrong shape, strengths outside [0, 1], unreadable images.
"""
from __future__ import annotations

import pytest
import torch

import scoresde as sd
from scoresde.data import load_digits
from scoresde.editing import (
    FixedSigmaLoss,
    anagram_model,
    blind_denoiser,
    compare_denoisers,
    denoising_mse,
    forward_process,
    gaussian_blur,
    get_view,
    hybrid_model,
    inpaint,
    load_image,
    repaint_schedule,
    save_image,
    sdedit,
)
from scoresde.models import Preconditioned, UNet
from scoresde.testbeds import GaussianMixture
from scoresde.testbeds.labelled import LabelledMixture
from scoresde.training import Trainer

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[LabelledMixture, torch.Tensor]:
    images, labels = load_digits()
    images, labels = images[:400].float(), labels[:400]
    mixture = GaussianMixture(images.reshape(400, -1), 0.0, event_shape=(1, 8, 8), name="digits")
    return LabelledMixture(mixture, labels, 10), images


def tiny_net(num_classes: int | None = 3) -> Preconditioned:
    torch.manual_seed(0)
    net = UNet(img_resolution=8, in_channels=1, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attn_resolutions=(), dropout=0.0, num_classes=num_classes, emb_mult=2, init_zero=1.0)
    return Preconditioned(net, kind="edm").eval().requires_grad_(False)


def test_sdedit_strength_0_is_the_input_and_small_strength_returns_the_training_image(digits):
    tb, images = digits
    model = tb.mixture.model(sd.get_sde("edm"))
    x = images[:6]
    assert torch.equal(sdedit(model, x, 0.0), x)
    near = sdedit(model, x, t_start=0.05, steps=4)  # σ = 0.05: the posterior is the image itself
    torch.testing.assert_close(near, x, atol=1e-5, rtol=0)
    far = sdedit(model, x, 1.0, steps=10)
    assert (far - x).abs().amax(dim=(1, 2, 3)).min() > 0.5  # strength 1 forgets the input
    one = sdedit(model, x[2:3], 0.6, steps=10, seed=2)  # seed + i: sample 2 of the batch = the single one
    torch.testing.assert_close(one, sdedit(model, x, 0.6, steps=10)[2:3])


@pytest.mark.parametrize("method,solver", [("replace", "heun"), ("replace", "euler_maruyama"),
                                           ("replace", "dpmpp_2m"), ("repaint", "heun"), ("repaint", "ddim")])
def test_inpainting_keeps_the_known_pixels_exactly(method, solver):
    net, sde = tiny_net(), sd.get_sde("edm")
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:, :4] = True  # left half known
    model = net.score_model(sde, 1)
    out = inpaint(model, x0, mask, method=method, solver=solver, steps=6, jump_length=2, resamplings=2)
    assert torch.equal(out[..., :4], x0[..., :4])
    assert (out[..., 4:] - x0[..., 4:]).abs().max() > 1e-2  # the unknown half was generated, not copied
    assert out.isfinite().all()


def test_repaint_schedule_and_measured_nfe():
    assert repaint_schedule(5, 1, 1) == [0, 1, 2, 3, 4, 5]
    assert repaint_schedule(6, 2, 3) == [0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 3, 4, 3, 2, 3, 4, 3, 2, 3, 4, 5, 6]
    path = repaint_schedule(6, 2, 3)
    down = sum(b > a for a, b in zip(path[:-1], path[1:]))
    model = tiny_net().score_model(sd.get_sde("edm"), 0)
    inpaint(model, torch.zeros(2, 1, 8, 8), torch.ones(8, 8), method="repaint", solver="heun", steps=6,
            jump_length=2, resamplings=3)
    assert model.nfe == 2 * down - 1  # Heun: 2 per interval, 1 into σ = 0


def test_inpainting_refuses_bad_masks():
    model, x0 = tiny_net().score_model(sd.get_sde("edm"), 0), torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"mask has shape \(7, 8\)"):
        inpaint(model, x0, torch.ones(7, 8))
    with pytest.raises(ValueError, match="0/1"):
        inpaint(model, x0, torch.full((8, 8), 0.5))
    with pytest.raises(ValueError, match="unknown inpainting method"):
        inpaint(model, x0, torch.ones(8, 8), method="magic")


@pytest.mark.parametrize("view", ["flip_ud", "rot180", "flip_lr"])
def test_anagram_views_are_consistent(digits, view):
    tb, _ = digits
    sde, v = sd.get_sde("edm"), get_view(view)
    x_T = 80 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ab = sd.sample(anagram_model(tb, sde, 3, 7, view), "heun", 12, x_T=x_T, grid="karras", denoise=True)
    ba = sd.sample(anagram_model(tb, sde, 7, 3, view), "heun", 12, x_T=v.forward(x_T), grid="karras", denoise=True)
    torch.testing.assert_close(ba, v.forward(ab), atol=1e-5, rtol=1e-5)  # involutive views: V⁻¹ = V


def test_anagram_with_guidance_is_one_batched_call_and_refuses_identity(digits):
    tb, _ = digits
    model = anagram_model(tb, sd.get_sde("edm"), 3, 7, "rot90", scale=2.0)
    model.score(torch.zeros(2, 1, 8, 8), 1.0)
    assert model.counts == {"network_calls": 1, "network_passes": 4}
    with pytest.raises(ValueError, match="other than the identity"):
        anagram_model(tb, sd.get_sde("edm"), 3, 7, "identity")
    with pytest.raises(KeyError, match="unknown view 'spin'"):
        anagram_model(tb, sd.get_sde("edm"), 3, 7, "spin")


def test_hybrid_of_one_class_is_the_conditional_model_and_bands_add_up():
    net, sde = tiny_net(), sd.get_sde("edm")
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.full((2,), 2.0)
    same = hybrid_model(net, sde, 1, 1, blur_sigma=1.5, scale=3.0).x0(x, t)
    torch.testing.assert_close(same, sd.ScoreModel(lambda a, b: net.predict(a, b, sde, None), sde, "x0").x0(x, t)
                               + 3.0 * (net.score_model(sde, 1).x0(x, t) - net.score_model(sde).x0(x, t)))
    a, b = net.score_model(sde, 0).x0(x, t), net.score_model(sde, 2).x0(x, t)
    torch.testing.assert_close(hybrid_model(net, sde, 0, 2, blur_sigma=1.5).x0(x, t),
                               gaussian_blur(a, 1.5) + b - gaussian_blur(b, 1.5))
    with pytest.raises(ValueError, match="blur sigma"):
        hybrid_model(net, sde, 0, 2, blur_sigma=0.0)


def test_tweedie_is_the_posterior_mean(digits):
    tb, images = digits
    model = tb.mixture.model(sd.get_sde("edm"))
    out = compare_denoisers(model, images[:200], t=0.8, sigma_px=1.0, solver="reverse_diffusion", steps=100)
    ratio = out["mse_iterative"].mean() / out["mse_tweedie"].mean()
    # the reverse SDE draws X' ~ p(x0 | x_t): E|X' − X|² = 2·E|E[X|x_t] − X|² for X, X' iid from the posterior
    assert 1.7 < ratio < 2.3, ratio
    assert out["mse_tweedie"].mean() < out["mse_blur"].mean()


def test_forward_process_shares_its_noise_and_checks_times():
    sde, x0 = sd.get_sde("vp"), torch.randn(3, 1, 4, 4)
    xs = forward_process(x0, sde, [0.1, 0.5, 0.9])
    t = torch.tensor([0.1, 0.5, 0.9])
    eps = (xs - sde.s(t)[:, None, None, None, None] * x0) / sde.std(t)[:, None, None, None, None]
    torch.testing.assert_close(eps[0], eps[2]) and torch.testing.assert_close(eps[0], eps[1])
    with pytest.raises(ValueError, match="times must be"):
        forward_process(x0, sde, [0.5, 2.0])


def test_single_sigma_denoiser_trains_with_the_trainer_and_is_blind(digits):
    _, images = digits
    torch.manual_seed(0)
    model, sde = blind_denoiser(tiny_net(None).net.requires_grad_(True)), sd.get_sde("edm")
    trainer = Trainer(model, sde, FixedSigmaLoss(0.5), images, batch_size=32, lr=3e-3, total_steps=30,
                      progress=False, log_every=0)
    before = float(denoising_mse(model.score_model(sde), images[:128], [0.5])[0])
    trainer.train()
    sm = trainer.model.eval().score_model(sde)
    after = denoising_mse(sm, images[:128], [0.5, 1.0], torch.Generator().manual_seed(0))
    assert float(after[0]) < min(before, 0.25) * 0.7, (before, after)  # beats returning the noisy input (σ² = 0.25)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(sm.x0(x, 0.5), sm.x0(x, 3.0))  # EDM SDE (s = 1): the network never sees σ


def test_images_round_trip_and_unreadable_files_are_named(tmp_path):
    x = (torch.randint(0, 256, (1, 1, 8, 8)).float() / 255) * 2 - 1
    save_image(x, tmp_path / "a.png")
    torch.testing.assert_close(load_image(tmp_path / "a.png", (1, 8, 8)), x, atol=1e-6, rtol=0)
    save_image(torch.full((1, 16, 16), 0.2), tmp_path / "big.png")
    small = load_image(tmp_path / "big.png", (1, 8, 8), invert=True)
    assert small.shape == (1, 1, 8, 8) and torch.allclose(small, torch.full_like(small, -0.2), atol=4 / 255)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read .*bad.png as an image"):
        load_image(tmp_path / "bad.png", (1, 8, 8))
    with pytest.raises(FileNotFoundError, match="no image file"):
        load_image(tmp_path / "missing.png", (1, 8, 8))


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), "half"])
def test_sdedit_refuses_bad_strength(strength):
    with pytest.raises(ValueError, match="strength must be"):
        sdedit(tiny_net().score_model(sd.get_sde("edm"), 0), torch.zeros(1, 1, 8, 8), strength)

"""Bring your own model: a diffusers UNet saved with ``save_pretrained`` and loaded back by ``from_diffusers`` gives,
with scoresde's solvers, the trajectories of diffusers' own scheduler loops on the same network, noise and timesteps;
``from_denoiser`` with scoresde's heun gives k-diffusion's ``sample_heun``. Tiny random-init models, no download.

Precision: diffusers builds its ᾱ table in float32 (scoresde uses those exact values, in float64). DDIM and DDPM keep
the sample's dtype, so in float64 the reference runs with the scheduler's tables upcast (the same float32 values) and
agrees to round-off. Euler, Heun and DPM-Solver++ cast the sample and their σ's to float32 inside ``step``, so those
comparisons are float32 against float32, to float32 round-off.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

import scoresde as sd
from scoresde.errors import UserError
from scoresde.guidance import classifier_free_guidance
from scoresde.models.external import alphas_cumprod_from_config, from_denoiser, from_diffusers
from scoresde.sde.discrete import DiscreteVPSDE
from scoresde.solvers.grids import grid_from_times
from scoresde.solvers.noise import GeneratorNoise

diffusers = pytest.importorskip("diffusers")
pytestmark = [pytest.mark.usefixtures("single_thread"),  # diffusers' own numpy-2 notice in set_timesteps:
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]

UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
            norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"))
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
CASES = {"eps_linear": ("epsilon", "linear"), "v_cosine": ("v_prediction", "squaredcos_cap_v2")}


def save_model(path, prediction_type="epsilon", beta_schedule="linear", scheduler=None, **unet_kwargs):
    """A random-init UNet2DModel and a DDPMScheduler config, saved with save_pretrained into ``path``."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**{**UNET, **unet_kwargs})
    unet.save_pretrained(path)
    (scheduler or diffusers.DDPMScheduler(beta_schedule=beta_schedule, prediction_type=prediction_type,
                                          clip_sample=False)).save_config(path)
    return path


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    dirs = {name: save_model(tmp_path_factory.mktemp(name), *case) for name, case in CASES.items()}
    dirs["classes"] = save_model(tmp_path_factory.mktemp("classes"), num_class_embeds=4)  # 3 classes + null
    return dirs


def reference_unet(path, dtype):
    """The same saved model, loaded by diffusers itself (not through from_diffusers)."""
    unet = diffusers.UNet2DModel.from_pretrained(path, torch_dtype=dtype, low_cpu_mem_usage=False)
    return unet.eval().requires_grad_(False)


def scheduler(cls, path, dtype, **overrides):
    """A diffusers scheduler from the saved config; in float64 its float32 tables are upcast (same values)."""
    sched = cls.from_config(cls.load_config(path), **overrides)
    if dtype == torch.float64:
        for name in ("alphas_cumprod", "final_alpha_cumprod", "one", "betas", "alphas"):
            if isinstance(getattr(sched, name, None), torch.Tensor):
                setattr(sched, name, getattr(sched, name).double())
    return sched


def latents(dtype, seed=0, batch=3):
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def discrete_grid(sde, timesteps, to_data=True):
    """A grid through diffusers' integer timesteps: t = timestep + 1, then the data (σ = 0)."""
    t = timesteps.to(torch.float64) + 1
    if to_data:
        t = torch.cat([t, t.new_zeros(1)])
    return grid_from_times(sde, t, ends_at_data=to_data)


def max_diff(a, b):
    """Largest difference relative to the reference's scale (a random network's samples reach |x| ~ 100, as x₀ = (x −
    √(1−ᾱ)ε̂)/√ᾱ amplifies an ε̂ that is not the noise; a trained one's stay near [-1, 1])."""
    return float((a - b).abs().max() / b.abs().max().clamp(min=1))


# ---- the table ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [dict(beta_schedule="linear"), dict(beta_schedule="scaled_linear",
                                    beta_start=0.00085, beta_end=0.012), dict(beta_schedule="squaredcos_cap_v2"),
                                    dict(trained_betas=torch.linspace(1e-4, 0.03, 1000).tolist())])
def test_table_and_timesteps_are_diffusers_own(config):
    sched = diffusers.EulerDiscreteScheduler(**config)
    table = alphas_cumprod_from_config(**config)
    assert torch.equal(table, sched.alphas_cumprod)
    sde = DiscreteVPSDE(table)
    k = torch.arange(1000, dtype=torch.float64)
    sigmas = ((1 - table.double()) / table.double()).sqrt()
    torch.testing.assert_close(sde.sigma(k + 1), sigmas, rtol=1e-14, atol=0)
    assert torch.equal(sde.t_of_alpha_bar(table.double()), k + 1)
    # fractional timesteps: diffusers' _sigma_to_t on the same (float64) log-σ table
    sig = torch.exp(torch.linspace(math.log(sigmas[0]) - 1, math.log(sigmas[-1]) + 1, 301, dtype=torch.float64))
    ref = torch.tensor([float(sched._sigma_to_t(s, sigmas.log().numpy())) for s in sig.numpy()], dtype=torch.float64)
    torch.testing.assert_close(sde.timestep_of_sigma(sig), ref, rtol=0, atol=1e-10)
    t = torch.linspace(0.0, 1000.0, 2001, dtype=torch.float64)[1:]
    torch.testing.assert_close(sde.t_of_sigma(sde.sigma(t)), t, rtol=1e-12, atol=1e-12)


# ---- solvers against diffusers' schedulers -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(CASES))
def test_ddim_equals_ddim_scheduler(model_dirs, case, dtype):
    path = model_dirs[case]
    model, sde = from_diffusers(path, dtype=dtype)
    unet, sched = reference_unet(path, dtype), scheduler(diffusers.DDIMScheduler, path, dtype)
    sched.set_timesteps(10)
    for eta in (0.0, 1.0):
        x = x_T = latents(dtype)
        g_ref = torch.Generator().manual_seed(7)
        for k in sched.timesteps:
            x = sched.step(unet(x, k).sample, k, x, eta=eta, generator=g_ref).prev_sample
        model.reset_nfe()
        ours = sd.sample(model, "ddim", grid=discrete_grid(sde, sched.timesteps), x_T=x_T, eta=eta,
                         noise=GeneratorNoise(torch.Generator().manual_seed(7)))
        assert model.nfe == 10
        assert max_diff(ours, x) < TOL[dtype], (eta, max_diff(ours, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(CASES))
def test_ancestral_on_the_ddpm_grid_equals_ddpm_scheduler(model_dirs, case, dtype):
    path = model_dirs[case]
    model, sde = from_diffusers(path, dtype=dtype)
    unet = reference_unet(path, dtype)
    for variance_type, variance in (("fixed_small", "posterior"), ("fixed_large", "beta")):
        sched = scheduler(diffusers.DDPMScheduler, path, dtype, variance_type=variance_type)
        sched.set_timesteps(20)
        x = x_T = latents(dtype)
        g_ref = torch.Generator().manual_seed(3)
        for k in sched.timesteps:
            x = sched.step(unet(x, k).sample, k, x, generator=g_ref).prev_sample
        grid = sd.make_grid(sde, 20, "ddpm")
        assert torch.equal(grid.t[:-1], sched.timesteps.double() + 1)
        ours = sd.sample(model, "ancestral", grid=grid, x_T=x_T, variance=variance,
                         noise=GeneratorNoise(torch.Generator().manual_seed(3)))
        assert max_diff(ours, x) < TOL[dtype], (variance_type, max_diff(ours, x))


@pytest.mark.parametrize("case", list(CASES))
def test_dpmpp_2m_equals_dpm_solver_multistep(model_dirs, case):
    """diffusers' DPM-Solver++(2M) (midpoint form, first order on the first and the last step into σ = 0)."""
    path, dtype = model_dirs[case], torch.float32
    model, sde = from_diffusers(path)
    unet, sched = reference_unet(path, dtype), scheduler(diffusers.DPMSolverMultistepScheduler, path, dtype)
    sched.set_timesteps(12)
    x = x_T = latents(dtype)
    for k in sched.timesteps:
        x = sched.step(unet(x, k).sample, k, x).prev_sample
    ours = sd.sample(model, "dpmpp_2m", grid=discrete_grid(sde, sched.timesteps), x_T=x_T)
    assert max_diff(ours, x) < 1e-5, max_diff(ours, x)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("solver,cls", [("euler", "EulerDiscreteScheduler"), ("heun", "HeunDiscreteScheduler")])
def test_euler_heun_with_karras_sigmas_equal_diffusers(model_dirs, case, solver, cls):
    """Karras σ's between the table's σ_min and σ_max: the network gets diffusers' fractional timesteps."""
    path, dtype, steps = model_dirs[case], torch.float32, 10
    model, sde = from_diffusers(path)
    unet = reference_unet(path, dtype)
    sched = scheduler(getattr(diffusers, cls), path, dtype, use_karras_sigmas=True, timestep_spacing="linspace")
    sched.set_timesteps(steps)
    grid = sd.make_grid(sde, steps, "karras", denoise=True)
    torch.testing.assert_close(grid.sigma.float(), sched.sigmas.unique_consecutive(), rtol=2e-6, atol=0)
    x_hat = latents(dtype) * sched.init_noise_sigma
    x = x_hat
    for k in sched.timesteps:
        x = sched.step(unet(sched.scale_model_input(x, k), k).sample, k, x).prev_sample
    model.reset_nfe()
    ours = sd.sample(model, solver, grid=grid, x_T=x_hat * float(grid.s[0]))
    assert model.nfe == len(sched.timesteps)
    assert max_diff(ours, x) < 1e-5, max_diff(ours, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_classifier_free_guidance_equals_the_guided_ddim_loop(model_dirs, dtype):
    path, scale = model_dirs["classes"], 2.5
    model, sde = from_diffusers(path, dtype=dtype)
    assert model.network.num_classes == 3
    unet, sched = reference_unet(path, dtype), scheduler(diffusers.DDIMScheduler, path, dtype)
    sched.set_timesteps(8)
    labels = torch.tensor([0, 2, 1])
    pair = torch.cat([labels, torch.full_like(labels, 3)])  # conditional, then the null class
    x = x_T = latents(dtype)
    for k in sched.timesteps:
        cond, uncond = unet(torch.cat([x, x]), k, class_labels=pair).sample.chunk(2)
        x = sched.step(uncond + scale * (cond - uncond), k, x).prev_sample
    guided = classifier_free_guidance(model.network, sde, labels, scale)
    ours = sd.sample(guided, "ddim", grid=discrete_grid(sde, sched.timesteps), x_T=x_T)
    assert max_diff(ours, x) < TOL[dtype], max_diff(ours, x)
    # a fixed class through from_diffusers(class_labels=...) is the conditional branch alone (scale 1)
    fixed, _ = from_diffusers(path, dtype=dtype, class_labels=labels)
    guided_1 = classifier_free_guidance(model.network, sde, labels, 1.0)
    torch.testing.assert_close(sd.sample(fixed, "ddim", grid=discrete_grid(sde, sched.timesteps), x_T=x_T),
                               sd.sample(guided_1, "ddim", grid=discrete_grid(sde, sched.timesteps), x_T=x_T),
                               rtol=0, atol=TOL[dtype])


# ---- k-diffusion / EDM denoisers ---------------------------------------------------------------------------------
def sample_heun(model, x, sigmas, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, randn_like=None):
    """k-diffusion ``sampling.sample_heun`` (Karras et al. 2022, Alg. 2), as published, with injected noise."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        eps = randn_like(x) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in)
        d = (x - denoised) / sigma_hat  # to_d
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt  # Euler method
        else:
            x_2 = x + d * dt  # Heun's method
            denoised_2 = model(x_2, sigmas[i + 1] * s_in)
            d_2 = (x_2 - denoised_2) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
    return x


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0):
    """k-diffusion ``sampling.get_sigmas_karras``."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def edm_style_net():
    """An EDM-style ``net(x, sigma, class_labels)`` (its own preconditioning inside), float64."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1).double().requires_grad_(False)
    embed = torch.nn.Embedding(3, 1).double().requires_grad_(False)

    def net(x, sigma, class_labels=None):
        s = sigma.reshape(-1, 1, 1, 1)
        c_in, c_skip = (s**2 + 0.25).rsqrt(), 0.25 / (s**2 + 0.25)
        h = torch.tanh(conv(x * c_in) + s.log() / 4 + embed(class_labels).reshape(-1, 1, 1, 1))
        return c_skip * x + s * 0.5 * c_in * h
    return net, conv


def test_from_denoiser_heun_equals_k_diffusion_sample_heun():
    net, conv = edm_style_net()
    labels = torch.tensor([0, 1, 2, 1])
    sigmas = get_sigmas_karras(12, 0.002, 80.0)
    x_T = latents(torch.float64, batch=4) * 80.0
    model, sde = from_denoiser(net, 0.002, 80.0, class_labels=labels)
    grid = sd.make_grid(sde, 12, "karras", denoise=True)
    torch.testing.assert_close(grid.sigma, sigmas, rtol=1e-14, atol=0)
    for churn in (0.0, 30.0):
        g_ref = torch.Generator().manual_seed(5)
        ref = sample_heun(lambda x, s: net(x, s, labels), x_T, sigmas, s_churn=churn,
                          randn_like=lambda x, g=g_ref: torch.randn(x.shape, generator=g, dtype=x.dtype))
        ours = sd.sample(model, "heun", grid=grid, x_T=x_T, S_churn=churn,
                         noise=GeneratorNoise(torch.Generator().manual_seed(5)))
        assert max_diff(ours, ref) < 1e-12, (churn, max_diff(ours, ref))
    # sigma_data: fn is the inner model of k-diffusion's layers.Denoiser, wrapped by eq. 7 of Karras et al.
    inner = lambda x, sigma: torch.tanh(conv(x)) * sigma.reshape(-1, 1, 1, 1).log1p()  # noqa: E731

    def wrapped(x, sigma, sigma_data=0.5):  # k_diffusion.layers.Denoiser.forward
        s = sigma.reshape(-1, 1, 1, 1)
        c_skip = sigma_data**2 / (s**2 + sigma_data**2)
        c_out, c_in = s * sigma_data / (s**2 + sigma_data**2) ** 0.5, 1 / (s**2 + sigma_data**2) ** 0.5
        return inner(x * c_in, sigma) * c_out + x * c_skip
    ref = sample_heun(wrapped, x_T, sigmas, randn_like=torch.randn_like)
    model, _ = from_denoiser(inner, 0.002, 80.0, sigma_data=0.5)
    assert max_diff(sd.sample(model, "heun", grid=grid, x_T=x_T), ref) < 1e-12


def test_every_registered_solver_runs_on_the_loaded_model(model_dirs):
    """The adapter is an ordinary ScoreModel of an ordinary SDE: every solver runs on it (none branches on the SDE),
    with its declared NFE where it declares one."""
    model, _ = from_diffusers(model_dirs["v_cosine"])
    for name in sorted(sd.SOLVERS):
        solver = sd.get_solver(name, **({"rtol": 1e-3, "atol": 1e-3} if name == "ode" else {}))
        model.reset_nfe()
        grid = sd.make_grid(model.sde, 4, "uniform", denoise=True)
        x = sd.sample(model, solver, grid=grid, x_T=latents(torch.float32, batch=2), seed=0)
        assert x.shape == (2, 1, 8, 8) and bool(x.isfinite().all()), name
        declared = solver.declared_nfe(grid)
        assert declared is None or model.nfe == declared, (name, model.nfe, declared)


# ---- loading ----------------------------------------------------------------------------------------------------
def test_pipeline_directory_object_and_scheduler_forms_agree(model_dirs, tmp_path):
    path = model_dirs["eps_linear"]
    unet = diffusers.UNet2DModel.from_pretrained(path, low_cpu_mem_usage=False)
    unet.save_pretrained(tmp_path / "unet")
    sched = diffusers.DDPMScheduler.from_config(diffusers.DDPMScheduler.load_config(path))
    sched.save_config(tmp_path / "scheduler")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    x, t = latents(torch.float32), torch.full((3,), 321.0)
    expected = from_diffusers(path)[0].eps(x, t)
    for model, sde in (from_diffusers(tmp_path), from_diffusers(tmp_path, subfolder="unet"),
                       from_diffusers(str(tmp_path / "unet"), scheduler=tmp_path / "scheduler"),
                       from_diffusers(unet, sched), from_diffusers(unet, dict(sched.config))):
        assert isinstance(sde, DiscreteVPSDE) and model.prediction == "eps"
        assert torch.equal(model.eps(x, t), expected)
    assert torch.equal(expected, unet(x, 320).sample)


def test_text_conditioned_unet_gets_its_keywords():
    """A UNet2DConditionModel object: ``encoder_hidden_states`` passed through to every call; scaled_linear table."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**{**UNET, "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                                             "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D")},
                                          cross_attention_dim=8, attention_head_dim=2).eval()
    states = torch.randn(3, 5, 8)
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    model, sde = from_diffusers(unet, sched, encoder_hidden_states=states)
    assert torch.equal(sde.alphas_cumprod, sched.alphas_cumprod.double())
    x = latents(torch.float32)
    with torch.no_grad():
        assert torch.equal(model.eps(x, 501.0), unet(x, 500, encoder_hidden_states=states).sample)


def test_the_network_under_another_sde_and_a_learned_variance(model_dirs, tmp_path):
    """Under any other SDE the network gets the VP-normalized state and diffusers' timestep of that σ; a UNet with
    a learned variance (2C output channels, variance_type learned_range) is its first C channels."""
    model, sde = from_diffusers(model_dirs["eps_linear"], dtype=torch.float64)
    assert model.network.sample_shape == (1, 8, 8)
    unet, vp = reference_unet(model_dirs["eps_linear"], torch.float64), sd.VPSDE()
    x = latents(torch.float64)
    for k in (0, 37, 500, 999):
        sigma = sde.sigma(torch.tensor(k + 1.0, dtype=torch.float64))
        t = vp.t_of_sigma(sigma)
        s = float(vp.s(t))
        ours = model.network.score_model(vp).eps(x * s * float(sigma.square().add(1).sqrt()), t)
        assert max_diff(ours, unet(x, k).sample) < 1e-6, k  # float32 timestep embedding of k ± round-off
    wide = save_model(tmp_path / "learned", out_channels=2, scheduler=diffusers.DDPMScheduler(
        variance_type="learned_range", clip_sample=False))
    model, _ = from_diffusers(wide)
    x = latents(torch.float32)
    out = reference_unet(wide, torch.float32)(x, 250).sample
    assert torch.equal(model.eps(x, 251.0), out[:, :1])


# ---- bad input: one clear error each ----------------------------------------------------------------------------
def _write_config(path, **changes):
    config = json.loads((path / "scheduler_config.json").read_text())
    (path / "scheduler_config.json").write_text(json.dumps({**config, **changes}))


def test_bad_inputs_are_named(model_dirs, tmp_path):
    src = model_dirs["eps_linear"]
    no_sched = tmp_path / "no_scheduler"
    diffusers.UNet2DModel.from_pretrained(src, low_cpu_mem_usage=False).save_pretrained(no_sched)
    with pytest.raises(UserError, match="no scheduler config: looked for .*scheduler_config.json"):
        from_diffusers(no_sched)
    for changes, match in ((dict(prediction_type="flow"), "prediction_type='flow' is not supported"),
                           (dict(beta_schedule="sigmoid"), "beta_schedule='sigmoid' is not supported"),
                           (dict(num_train_timesteps=-3), "num_train_timesteps=-3"),
                           (dict(rescale_betas_zero_snr=True), "rescale_betas_zero_snr=True is not supported"),
                           (dict(my_hook="x"), "unknown key 'my_hook'")):
        bad = save_model(tmp_path / next(iter(changes)))
        _write_config(bad, **changes)
        with pytest.raises(UserError, match=match):
            from_diffusers(bad)
    wide = save_model(tmp_path / "wide", out_channels=2)
    with pytest.raises(UserError, match="output has 2 channels but its input 1"):
        from_diffusers(wide)

    class Crop(torch.nn.Module):
        def forward(self, sample, timestep, return_dict=False):
            return (sample[..., :4],)
    model, _ = from_diffusers(Crop(), diffusers.DDPMScheduler())
    with pytest.raises(UserError, match=r"output has shape \(3, 1, 8, 4\) but its input \(3, 1, 8, 8\)"):
        model.eps(latents(torch.float32), 10.0)
    with pytest.raises(UserError, match="needs scheduler="):
        from_diffusers(Crop())
    with pytest.raises(UserError, match="does not exist"):
        from_diffusers(tmp_path / "missing")
    with pytest.raises(UserError, match="no conditioning keyword 'prompt'"):
        from_diffusers(src, prompt="a cat")
    with pytest.raises(UserError, match="sigma_min < sigma_max"):
        from_denoiser(lambda x, s: x, 80.0, 0.002)
    model, _ = from_denoiser(lambda x, s: x[:, :1], 0.002, 80.0)
    with pytest.raises(UserError, match="denoiser's output has shape"):
        model.x0(torch.zeros(2, 3), 1.0)

"""Bring your own pretrained model: a diffusers UNet with its scheduler, or a k-diffusion / EDM denoiser, as a
:class:`~scoresde.ScoreModel` of an SDE that every scoresde solver drives.

* :func:`from_diffusers` — a ``UNet2DModel`` / ``UNet2DConditionModel`` (an object, or a local ``save_pretrained``
  directory: model + ``scheduler_config.json``, or a pipeline directory with ``unet/`` and ``scheduler/``). The
  SDE is :class:`~scoresde.sde.discrete.DiscreteVPSDE` of the scheduler's own ᾱ table, so SDE time t is the
  network's timestep plus one and a σ between table entries gets the fractional timestep diffusers' Karras/Euler
  schedulers give it. The prediction kind comes from ``prediction_type``: ``epsilon`` → ``eps``,
  ``v_prediction`` → ``v`` (diffusers' ``v = √ᾱ·ε − √(1−ᾱ)·x₀``, Salimans & Ho 2022, §4 — under this SDE exactly
  scoresde's VP-normalized v, since s = √ᾱ and s·σ = √(1−ᾱ)), ``sample`` → ``x0``.
* :func:`from_denoiser` — a ``D(x, sigma, **kwargs)`` callable (EDM's ``net(x, sigma, class_labels)``,
  k-diffusion's wrapped denoisers) on the EDM SDE (σ(t) = t, s = 1; Karras et al. 2022, eq. 1 and Table 1).

Safety: nothing read from a directory runs code. The model is loaded by diffusers' own ``from_pretrained`` with
``local_files_only=True`` (safetensors when the directory has them; diffusers reads a ``.bin`` with
``torch.load(weights_only=True)``), for the two allowlisted classes only; the scheduler config is read as JSON and
only known keys and values are accepted (unknown ones are refused by name). scoresde's solvers replace the
scheduler's sampling, so its sampling-only keys (``clip_sample``, ``solver_order``, ...) are accepted and ignored:
in particular no solver clips x₀.
"""
from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scoresde.errors import UserError
from scoresde.models.score_model import ScoreModel
from scoresde.sde.base import SDE
from scoresde.sde.discrete import SPACINGS, DiscreteVPSDE
from scoresde.sde.edm import EDMSDE
from scoresde.utils import append_dims, as_time

PREDICTION_TYPES: dict[str, str] = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2")
MODEL_CLASSES: tuple[str, ...] = ("UNet2DModel", "UNet2DConditionModel")
# Keys of diffusers' discrete schedulers that only steer their own sampling loops: accepted, ignored.
SAMPLING_KEYS = frozenset({
    "algorithm_type", "clip_sample", "clip_sample_range", "corrector_order", "disable_corrector",
    "dynamic_thresholding_ratio", "euler_at_final", "final_sigmas_type", "flow_shift", "interpolation_type",
    "lambda_min_clipped", "lower_order_final", "noise_sampler_seed", "original_inference_steps", "predict_x0",
    "predictor_order", "rho", "sample_max_value", "set_alpha_to_one", "sigma_max", "sigma_min", "skip_prk_steps",
    "solver_order", "solver_p", "solver_type", "tau_func", "thresholding", "timestep_scaling", "use_beta_sigmas",
    "use_exponential_sigmas", "use_karras_sigmas", "use_lu_lambdas"})
# Keys that would change the table or the model's meaning: only the value that keeps the ᾱ-table model is accepted.
FIXED_KEYS: dict[str, tuple[Any, ...]] = {"rescale_betas_zero_snr": (False,), "timestep_type": ("discrete",),
                                          "use_flow_sigmas": (False,), "shift_terminal": (None,)}
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
TABLE_KEYS = frozenset({"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                        "prediction_type", "timestep_spacing", "steps_offset", "variance_type"})


# ---- the scheduler config -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SchedulerSpec:
    """What scoresde takes from a scheduler config: the ᾱ table (float32, as diffusers computes it), the
    prediction kind, the timestep spacing of its chain, and whether the network also outputs a variance."""

    alphas_cumprod: Tensor
    prediction: str
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    learned_variance: bool = False

    def sde(self) -> DiscreteVPSDE:
        return DiscreteVPSDE(self.alphas_cumprod, self.timestep_spacing, self.steps_offset)


def _betas_for_alpha_bar(n: int, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021, eq. 17 with s = 0.008, as diffusers' ``betas_for_alpha_bar(n)`` (cosine)."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
                        dtype=torch.float32)


def alphas_cumprod_from_config(num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                               beta_schedule: str = "linear", trained_betas: Any = None) -> Tensor:
    """The ᾱ table exactly as diffusers' discrete schedulers build it (``DDPMScheduler.__init__``: betas in float32,
    ``alphas_cumprod = cumprod(1 − betas)`` in float32): ``linear`` = linspace(β₀, β₁, N) (Ho et al. 2020, §4),
    ``scaled_linear`` = linspace(√β₀, √β₁, N)² (latent diffusion), ``squaredcos_cap_v2`` = the capped cosine
    schedule, or the given ``trained_betas``."""
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = _betas_for_alpha_bar(num_train_timesteps)
    else:
        raise UserError(f"beta_schedule={beta_schedule!r} is not supported; choose one of {', '.join(BETA_SCHEDULES)} "
                        "or give trained_betas")
    return torch.cumprod(1.0 - betas, dim=0)


def _check_number(config: Mapping[str, Any], key: str, kind: type, default: Any, low: float) -> Any:
    value = config.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= low
    if not ok or (kind is int and value != int(value)):
        raise UserError(f"scheduler config: {key}={value!r} must be {'an integer' if kind is int else 'a number'} "
                        f">= {low}")
    return kind(value)


def _check_trained_betas(value: Any, n: int) -> list[float] | None:
    if value is None:
        return None
    ok = isinstance(value, list) and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in value)
    if not ok or len(value) != n or not all(0 < b < 1 for b in value):
        raise UserError(f"scheduler config: trained_betas must be a list of {n} numbers in (0, 1) "
                        "(num_train_timesteps of them)")
    return [float(b) for b in value]


def read_scheduler_config(config: Mapping[str, Any]) -> SchedulerSpec:
    """Check a scheduler config (a dict read from ``scheduler_config.json``) and build its :class:`SchedulerSpec`.
    Only known keys and values are accepted; the message names the first that is not."""
    if not isinstance(config, Mapping):
        raise UserError(f"scheduler config must be a JSON object, got {type(config).__name__}")
    name = config.get("_class_name", "")
    if not isinstance(name, str) or name.startswith(("FlowMatch", "EDM", "ScoreSde", "CMStochastic")):
        raise UserError(f"scheduler config: _class_name={name!r} is not a discrete ᾱ-table scheduler "
                        "(DDPM, DDIM, PNDM, Euler, Heun, DPM-Solver, UniPC, ...); it is not supported")
    for key in config:
        if not isinstance(key, str) or not (key.startswith("_") or key in TABLE_KEYS or key in SAMPLING_KEYS
                                            or key in FIXED_KEYS):
            raise UserError(f"scheduler config: unknown key {key!r}")
    for key, allowed in FIXED_KEYS.items():
        if key in config and config[key] not in allowed:
            raise UserError(f"scheduler config: {key}={config[key]!r} is not supported (only {allowed[0]!r})")
    n = _check_number(config, "num_train_timesteps", int, 1000, 2)
    beta_start = _check_number(config, "beta_start", float, 0.0001, 0)
    beta_end = _check_number(config, "beta_end", float, 0.02, 0)
    schedule = config.get("beta_schedule", "linear")
    trained = _check_trained_betas(config.get("trained_betas"), n)
    if trained is None and schedule not in BETA_SCHEDULES:
        raise UserError(f"scheduler config: beta_schedule={schedule!r} is not supported; "
                        f"choose one of {', '.join(BETA_SCHEDULES)} or give trained_betas")
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise UserError(f"scheduler config: prediction_type={prediction_type!r} is not supported; "
                        f"choose one of {', '.join(PREDICTION_TYPES)}")
    spacing = config.get("timestep_spacing", "leading")
    if spacing not in SPACINGS:
        raise UserError(f"scheduler config: timestep_spacing={spacing!r} must be one of {', '.join(SPACINGS)}")
    variance = config.get("variance_type", "fixed_small")
    if variance is not None and variance not in VARIANCE_TYPES:
        raise UserError(f"scheduler config: variance_type={variance!r} must be one of {', '.join(VARIANCE_TYPES)}")
    table = alphas_cumprod_from_config(n, beta_start, beta_end, schedule, trained)
    if not bool(((table > 0) & (table < 1)).all()) or not bool((table[1:] < table[:-1]).all()):
        raise UserError(f"scheduler config: the betas (beta_start={beta_start}, beta_end={beta_end}, "
                        f"beta_schedule={schedule!r}) do not give a strictly decreasing ᾱ in (0, 1)")
    return SchedulerSpec(table, PREDICTION_TYPES[prediction_type], spacing,
                         _check_number(config, "steps_offset", int, 0, 0), variance in ("learned", "learned_range"))


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read the {what} {path}: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"the {what} {path} is not a JSON object")
    return data


def _scheduler_spec(scheduler: Any, candidates: list[Path]) -> SchedulerSpec:
    """A spec from a scheduler object (its ``config``), a config dict, a config file or directory, or — when
    ``scheduler`` is None — the first existing file of ``candidates``."""
    if scheduler is None:
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise UserError("no scheduler config: looked for " + ", ".join(str(p) for p in candidates)
                            + "; pass scheduler= (a diffusers scheduler, its config dict or its scheduler_config.json)")
        return read_scheduler_config(_read_json(found[0], "scheduler config"))
    if isinstance(scheduler, (str, Path)):
        path = Path(scheduler)
        path = path / "scheduler_config.json" if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"no scheduler config at {path}")
        return read_scheduler_config(_read_json(path, "scheduler config"))
    config = getattr(scheduler, "config", scheduler)
    if not isinstance(config, Mapping):
        raise UserError(f"scheduler= must be a diffusers scheduler, a config dict or a path, "
                        f"got {type(scheduler).__name__}")
    return read_scheduler_config(dict(config))


# ---- the network ----------------------------------------------------------------------------------------------
class DiffusersNetwork(nn.Module):
    """A diffusers UNet as a conditional model of :mod:`scoresde.guidance` (``predict(x, t, sde, class_labels)``,
    ``prediction``, ``num_classes``).

    Under its own :class:`DiscreteVPSDE` the network gets the state x itself and the timestep ``t − 1`` (see
    :mod:`scoresde.sde.discrete`); under any other SDE it gets the VP-normalized ``x·α/s`` (α = 1/√(1+σ²)) and the
    timestep diffusers gives that σ (``_sigma_to_t``), as a scheduler's ``scale_model_input`` does. The UNet runs in
    its own dtype; the output comes back in x's. Fixed ``conditioning`` keywords (``encoder_hidden_states`` ...) go
    to every call. A class-conditional UNet (``num_class_embeds = K + 1``) has ``num_classes = K``: its last
    class embedding is taken as the null class of classifier-free guidance, scoresde's convention.
    """

    def __init__(self, unet: nn.Module, spec: SchedulerSpec, conditioning: Mapping[str, Any] | None = None):
        super().__init__()
        self.unet, self.spec, self.sde = unet, spec, spec.sde()
        self.conditioning = dict(conditioning or {})
        self._check_conditioning(self.conditioning)
        config = getattr(unet, "config", {})
        n_in, n_out = config.get("in_channels"), config.get("out_channels")
        if n_in is not None and n_out is not None and n_out != n_in * (2 if spec.learned_variance else 1):
            raise UserError(f"the model's output has {n_out} channels but its input {n_in}: its output shape differs "
                            "from its input (a learned-variance model needs variance_type learned or learned_range)")
        embeds = config.get("num_class_embeds")
        self.num_classes: int | None = int(embeds) - 1 if embeds else None

    @property
    def prediction(self) -> str:
        return self.spec.prediction

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """(channels, height, width) of one sample from the UNet's config (None when it does not say)."""
        config = getattr(self.unet, "config", {})
        size, channels = config.get("sample_size"), config.get("in_channels")
        if size is None or channels is None:
            return None
        return (int(channels), *((int(size),) * 2 if isinstance(size, int) else (int(v) for v in size)))

    def _check_conditioning(self, kwargs: Mapping[str, Any]) -> None:
        params = inspect.signature(self.unet.forward).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        bad = sorted(set(kwargs) - set(params) - {"class_labels"})
        if bad:
            takes = ", ".join(k for k in params if k not in ("sample", "timestep", "return_dict"))
            raise UserError(f"the model takes no conditioning keyword {', '.join(map(repr, bad))}; it takes {takes}")

    def forward(self, x: Tensor, timestep: Tensor, **conditioning: Any) -> Tensor:
        """The raw UNet output at diffusers timestep(s) ``timestep`` (B,), with the learned variance dropped."""
        dtype = next((p.dtype for p in self.unet.parameters()), x.dtype)
        ts = timestep if timestep.dtype in (torch.float32, torch.float64) else timestep.float()
        out = self.unet(x.to(dtype), ts, **{**self.conditioning, **conditioning}, return_dict=False)
        out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        if self.spec.learned_variance and isinstance(out, Tensor) and out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise UserError(f"the model's output has shape {got} but its input {tuple(x.shape)}: "
                            "a score model's output must have the shape of its input")
        return out.to(x.dtype)

    def predict(self, x: Tensor, t: Tensor | float, sde: SDE, class_labels: Tensor | int | None = None) -> Tensor:
        """The network's prediction (kind :attr:`prediction`) at time t of ``sde``."""
        t = as_time(t, x)
        if sde is self.sde:
            inp, timestep = x, self.sde.timestep(t)
        else:
            sigma, s = sde.sigma(t), sde.s(t)
            inp = x * append_dims(torch.rsqrt(1 + sigma**2) / s, x.ndim)
            timestep = self.sde.timestep_of_sigma(sigma)
        extra = {} if class_labels is None else {"class_labels": torch.as_tensor(class_labels, device=x.device)
                                                 .long().expand(x.shape[0])}
        return self(inp, timestep, **extra)

    def score_model(self, sde: SDE | None = None, class_labels: Tensor | int | None = None) -> ScoreModel:
        """A counted :class:`ScoreModel` of ``sde`` (default: the table's own SDE) for fixed ``class_labels``."""
        sde = self.sde if sde is None else sde
        model = ScoreModel(lambda x, t: self.predict(x, t, sde, class_labels), sde, self.prediction)
        model.network = self  # type: ignore[attr-defined]
        return model


def _load_unet(model_dir: Path, subfolder: str | None, dtype: torch.dtype | None) -> nn.Module:
    """diffusers' own loader, local files only, for the allowlisted classes; safetensors when present."""
    folder = model_dir / subfolder if subfolder else model_dir
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"no model config.json in {folder} (a save_pretrained directory of a UNet2DModel)")
    name = _read_json(config_path, "model config").get("_class_name")
    if name not in MODEL_CLASSES:
        raise UserError(f"{config_path}: _class_name={name!r} is not supported; "
                        f"choose one of {', '.join(MODEL_CLASSES)}")
    try:
        import diffusers  # the optional dependency, imported when a model is loaded
    except ImportError:
        raise UserError("loading a diffusers model directory needs the diffusers package (pip install diffusers)") \
            from None
    has_safetensors = any(folder.glob("*.safetensors"))
    try:
        unet = getattr(diffusers, name).from_pretrained(str(model_dir), subfolder=subfolder, local_files_only=True,
                                                        use_safetensors=has_safetensors, torch_dtype=dtype,
                                                        low_cpu_mem_usage=False)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the {name} in {folder}: {str(err).splitlines()[0]}") from None
    return unet


def _resolve(path: Path, subfolder: str | None) -> tuple[Path, str | None, list[Path]]:
    """(model directory, its subfolder, the scheduler config files to look for, in order)."""
    if not path.is_dir():
        raise UserError(f"model directory {path} does not exist")
    if subfolder is None and (path / "unet").is_dir() and not (path / "config.json").is_file():
        subfolder = "unet"  # a pipeline directory
    model_dir = path / subfolder if subfolder else path
    candidates = [model_dir / "scheduler_config.json", path / "scheduler" / "scheduler_config.json",
                  path / "scheduler_config.json"]
    return path, subfolder, list(dict.fromkeys(candidates))


def from_diffusers(unet_or_dir: nn.Module | str | Path, scheduler: Any = None, *, subfolder: str | None = None,
                   device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                   **conditioning: Any) -> tuple[ScoreModel, DiscreteVPSDE]:
    """A diffusers model as ``(ScoreModel, SDE)``.

    Args:
        unet_or_dir: a ``UNet2DModel`` / ``UNet2DConditionModel`` (any module called as diffusers' UNets are), or a
            local directory: a ``save_pretrained`` model directory with ``scheduler_config.json`` (or a
            ``scheduler/`` folder next to it), or a pipeline directory with ``unet/`` and ``scheduler/``.
        scheduler: a diffusers scheduler, its config dict, or the path of its ``scheduler_config.json`` (or its
            folder). Required with a model object; read from the directory when omitted.
        subfolder: the model's folder inside ``unet_or_dir`` (``"unet"`` is found by itself in a pipeline).
        device, dtype: where and in what precision the network runs (default: as loaded).
        conditioning: fixed keyword arguments of every network call: ``class_labels`` (an int or (B,) labels),
            ``encoder_hidden_states``, ... For classifier-free guidance use ``model.network`` with
            :func:`scoresde.guidance.classifier_free_guidance`.

    Returns:
        The score model (``model.network`` is the :class:`DiffusersNetwork`) and its :class:`DiscreteVPSDE`.
    """
    if isinstance(unet_or_dir, (str, Path)):
        root, subfolder, candidates = _resolve(Path(unet_or_dir), subfolder)
        spec = _scheduler_spec(scheduler, candidates)
        unet = _load_unet(root, subfolder, dtype)  # loaded in dtype (diffusers' torch_dtype)
        dtype = None
    elif isinstance(unet_or_dir, nn.Module):
        if scheduler is None:
            raise UserError("a model object needs scheduler= (a diffusers scheduler, its config dict or the path of "
                            "its scheduler_config.json)")
        spec, unet = _scheduler_spec(scheduler, []), unet_or_dir
    else:
        raise UserError(f"from_diffusers takes a diffusers UNet or a directory, got {type(unet_or_dir).__name__}")
    if device is not None or dtype is not None:  # only what is given: diffusers' to() warns on a dtype keyword
        unet = unet.to(**{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
    unet = unet.eval().requires_grad_(False)
    labels = conditioning.pop("class_labels", None)
    network = DiffusersNetwork(unet, spec, conditioning)
    return network.score_model(class_labels=labels), network.sde


# ---- k-diffusion / EDM denoisers ---------------------------------------------------------------------------------
def from_denoiser(fn: Callable[..., Tensor], sigma_min: float, sigma_max: float, *, sigma_data: float | None = None,
                  **conditioning: Any) -> tuple[ScoreModel, EDMSDE]:
    """A denoiser ``D(x, sigma, **conditioning)`` (σ of shape (B,)) as an x₀-predicting model of the EDM SDE.

    EDM's ``net(x, sigma, class_labels)`` (Karras et al. 2022, ``EDMPrecond``) and k-diffusion's wrapped models
    (``model(x, sigma, **extra_args)``) are such denoisers: under the EDM SDE σ(t) = t and s = 1, so the solver's t
    is the σ they take and their output is the x₀ prediction. With ``sigma_data`` given, ``fn`` is instead the
    inner network F of k-diffusion's ``layers.Denoiser`` and is wrapped as it does (Karras et al. 2022, eq. 7):
    ``D = c_skip·x + c_out·F(c_in·x, σ)``, ``c_skip = σ_d²/(σ² + σ_d²)``, ``c_out = σσ_d/√(σ² + σ_d²)``,
    ``c_in = 1/√(σ² + σ_d²)``. ``conditioning`` (e.g. ``class_labels``) goes to every call.
    """
    if not callable(fn):
        raise UserError(f"from_denoiser needs a callable D(x, sigma), got {type(fn).__name__}")
    for key, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UserError(f"from_denoiser: {key} must be a positive number, got {value!r}")
    if not sigma_min < sigma_max:
        raise UserError(f"from_denoiser: need sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    if sigma_data is not None and (not isinstance(sigma_data, (int, float)) or not sigma_data > 0):
        raise UserError(f"from_denoiser: sigma_data must be a positive number, got {sigma_data!r}")
    sde = EDMSDE(float(sigma_min), float(sigma_max))

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        sigma = t  # EDM SDE: σ(t) = t, s(t) = 1
        if sigma_data is None:
            out = fn(x, sigma, **conditioning)
        else:
            total = append_dims(sigma**2 + sigma_data**2, x.ndim)
            c_skip, c_in = sigma_data**2 / total, total.rsqrt()
            c_out = append_dims(sigma, x.ndim) * sigma_data * c_in
            out = c_skip * x + c_out * fn(x * c_in, sigma, **conditioning)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise UserError(f"the denoiser's output has shape {got} but its input {tuple(x.shape)}")
        return out.to(x.dtype)

    return ScoreModel(denoise, sde, "x0"), sde


__all__ = ["from_diffusers", "from_denoiser", "DiffusersNetwork", "SchedulerSpec", "read_scheduler_config",
           "alphas_cumprod_from_config", "PREDICTION_TYPES", "BETA_SCHEDULES"]

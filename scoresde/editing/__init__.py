"""Image editing with any registered solver: forward-process views and denoising, a single-σ denoiser, SDEdit
(Meng et al. 2022), inpainting (Song et al. 2021 app. I; RePaint, Lugmayr et al. 2022), visual anagrams and
hybrid images (Geng et al. 2024), and image files in and out."""
from scoresde.editing.filters import gaussian_blur, high_pass, low_pass
from scoresde.editing.forward import (
    blur_baseline,
    compare_denoisers,
    forward_process,
    iterative_denoise,
    tweedie_denoise,
)
from scoresde.editing.illusions import anagram_model, hybrid_model
from scoresde.editing.images import load_image, save_image
from scoresde.editing.inpaint import METHODS, inpaint, repaint_schedule
from scoresde.editing.sdedit import sdedit
from scoresde.editing.single_sigma import FixedSigmaLoss, blind_denoiser, denoising_mse
from scoresde.editing.views import VIEWS, get_view

__all__ = ["FixedSigmaLoss", "METHODS", "VIEWS", "anagram_model", "blind_denoiser", "blur_baseline",
           "compare_denoisers", "denoising_mse", "forward_process", "gaussian_blur", "get_view", "high_pass",
           "hybrid_model", "inpaint", "iterative_denoise", "load_image", "low_pass", "repaint_schedule",
           "save_image", "sdedit", "tweedie_denoise"]

"""Values the library used to accept and now refuses with a ValueError that names the parameter, what was
expected and what was given (issue 12.2):

* ``EMA``: a decay outside [0, 1) or NaN, a non-positive half-life, ramp-up ratio or batch size, a ramp-up
  without the half-life form, and the same values read back by ``load_state_dict``.
* ``sdedit`` / ``inpaint``: an image outside [-1, 1] (beyond a 1e-3 tolerance) or NaN, an image of a shape other
  than the model's sample shape, a mask that fits neither; ``data_range=None`` opts out for data not in [-1, 1].
* Testbeds: a batch of another event shape given to a mixture's score, density or denoiser (plain and labelled),
  or as ``x_T`` / the sample shape to a sampler, names both shapes instead of a matmul error.
"""
from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.editing import inpaint, sdedit
from scoresde.models import EMA, MLP
from scoresde.testbeds import dataset, labelled_ring

pytestmark = pytest.mark.usefixtures("single_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def re_shape(shape: tuple[int, ...]) -> str:
    """A shape as a regex of its Python repr."""
    return "\\(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + "\\)"


# --- EMA ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,name", [
    (dict(decay=1.5), "decay"), (dict(decay=1.0), "decay"), (dict(decay=-0.01), "decay"),
    (dict(decay=math.nan), "decay"), (dict(decay=math.inf), "decay"), (dict(decay="0.9"), "decay"),
    (dict(decay=True), "decay"),
    (dict(half_life_kimg=0.0, batch_size=8), "half_life_kimg"),
    (dict(half_life_kimg=-1, batch_size=8), "half_life_kimg"),
    (dict(half_life_kimg=math.nan, batch_size=8), "half_life_kimg"),
    (dict(half_life_kimg=1.0), "batch_size"), (dict(half_life_kimg=1.0, batch_size=0), "batch_size"),
    (dict(half_life_kimg=1.0, batch_size=2.5), "batch_size"),
    (dict(half_life_kimg=1.0, batch_size=8, rampup_ratio=0.0), "rampup_ratio"),
    (dict(half_life_kimg=1.0, batch_size=8, rampup_ratio=math.inf), "rampup_ratio"),
    (dict(decay=0.9, rampup_ratio=0.05), "rampup_ratio"),
    (dict(decay=0.9, half_life_kimg=1.0, batch_size=8), "one of decay and half_life_kimg"),
])
def test_ema_refuses_bad_options_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EMA(MLP(2, hidden=4, depth=1), **kwargs)


@pytest.mark.parametrize("kwargs", [dict(), dict(decay=0.0), dict(decay=0.9999), dict(decay=0),
                                    dict(half_life_kimg=0.5, batch_size=64, rampup_ratio=0.05)])
def test_ema_accepts_the_valid_range(kwargs):
    ema = EMA(MLP(2, hidden=4, depth=1), **kwargs)
    assert 0 <= ema.beta(step=3) < 1


def test_ema_state_with_a_bad_decay_is_refused_and_leaves_the_average_alone():
    net = MLP(2, hidden=4, depth=1)
    ema = EMA(net, decay=0.5)
    state = ema.state_dict()
    state["decay"] = 1.5
    state["shadow"] = {k: v + 1 for k, v in state["shadow"].items()}
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with pytest.raises(ValueError, match=r"decay must be a finite number in \[0, 1\), got 1.5"):
        ema.load_state_dict(state)
    assert all(torch.equal(before[k], ema.shadow[k]) for k in before)
    assert ema.decay == 0.5


# --- editing -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(5, 1, 8, 8, generator=gen(0)) * 2 - 1


@pytest.fixture(scope="module")
def image_model(images):
    return dataset(images, name="five images").model(sd.get_sde("edm"))


@pytest.mark.parametrize("bad,shown", [(1.5, "1.5"), (-1.01, "-1.01"), (math.nan, "nan")])
def test_edits_refuse_images_outside_the_data_range(image_model, images, bad, shown):
    x = images.clone()
    x[0, 0, 3, 3] = bad
    mask = torch.ones(8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match=rf"sdedit: x must lie in the data range \[-1, 1\].*{shown}"):
        sdedit(image_model, x, 0.5, steps=2)
    with pytest.raises(ValueError, match=rf"inpaint: x0 must lie in the data range \[-1, 1\].*{shown}"):
        inpaint(image_model, x, mask, steps=2)


def test_edits_allow_a_rounding_tolerance_and_opt_out(image_model, images):
    x = images.clone()
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 1 + 5e-4, -1 - 5e-4
    assert torch.equal(sdedit(image_model, x, 0.0), x)  # within 1e-3: accepted
    ring = sd.get_testbed("ring")
    points = ring.sample(4, generator=gen(1))  # radius-2 ring: not image data
    with pytest.raises(ValueError, match="data range"):
        sdedit(ring.model(sd.get_sde("vp")), points, 0.0)
    assert torch.equal(sdedit(ring.model(sd.get_sde("vp")), points, 0.0, data_range=None), points)


@pytest.mark.parametrize("given", [(2, 1, 6, 6), (2, 3, 8, 8), (1, 8, 8)])
def test_edits_refuse_images_of_another_shape_than_the_model(image_model, given):
    x = torch.zeros(given)
    expected = r"expected \(B, 1, 8, 8\)"
    with pytest.raises(ValueError, match=rf"sdedit: x has shape {re_shape(given)}, {expected}"):
        sdedit(image_model, x, 0.5, shape=(1, 8, 8))
    with pytest.raises(ValueError, match=rf"inpaint: x0 has shape {re_shape(given)}, {expected}"):
        inpaint(image_model, x, torch.ones(given[-2:], dtype=torch.bool), shape=(1, 8, 8))


def test_edits_refuse_inputs_that_are_not_a_float_batch(image_model):
    with pytest.raises(ValueError, match=r"floating-point batch .* got a torch.int64 tensor of shape \(2, 1, 8, 8\)"):
        sdedit(image_model, torch.zeros(2, 1, 8, 8, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="floating-point batch .* got list"):
        inpaint(image_model, [[0.0]], torch.ones(8, 8))


@pytest.mark.parametrize("mask_shape", [(7, 8), (2, 1, 8, 7), (3, 1, 8, 8)])
def test_inpaint_names_the_shapes_of_a_mask_that_does_not_fit(image_model, images, mask_shape):
    with pytest.raises(ValueError, match=rf"mask has shape {re_shape(mask_shape)}.*images of shape \(5, 1, 8, 8\)"):
        inpaint(image_model, images, torch.ones(mask_shape, dtype=torch.bool), steps=2)


# --- testbeds ----------------------------------------------------------------------------------------------------

def _shape_error(given: tuple[int, ...], expected: str):
    return pytest.raises(ValueError, match=rf"x has shape {re_shape(given)}, expected \({expected}\)")


@pytest.mark.parametrize("given", [(4, 3), (4, 1, 2), (3,)])
def test_mixture_methods_name_the_expected_and_given_shape(given):
    ring, sde, x = sd.get_testbed("ring"), sd.get_sde("vp"), torch.zeros(given)
    calls = [lambda: ring.score(x, 0.5, sde), lambda: ring.denoiser(x, 0.5), lambda: ring.log_prob(x),
             lambda: ring.marginal_log_prob(x, 0.5, sde), lambda: ring.score_sigma(x, 0.5),
             lambda: ring.model(sde).eps(x, 0.5)]
    for call in calls:
        with _shape_error(given, "B, 2"):
            call()
    ring.check_batch(torch.zeros(4, 2))  # a right batch passes


def test_labelled_mixture_and_image_testbeds_name_their_event_shape():
    tb, sde = labelled_ring(), sd.get_sde("vp")
    with _shape_error((4, 3), "B, 2"):
        tb.score(torch.zeros(4, 3), 0.5, sde, 0)
    with _shape_error((4, 3), "B, 2"):
        tb.log_class_probs(torch.zeros(4, 3), 0.5, sde)
    with _shape_error((4, 3), "B, 2"):
        tb.log_prob(torch.zeros(4, 3), 0.5, sde)
    images = dataset(torch.zeros(3, 1, 8, 8))
    with _shape_error((2, 64), "B, 1, 8, 8"):  # flattened images: same size, still refused
        images.score(torch.zeros(2, 64), 1.0, sd.get_sde("edm"))


@pytest.mark.parametrize("solver", ["heun", "euler_maruyama", "ode"])
def test_sampling_a_testbed_with_a_wrong_x_T_names_both_shapes(solver):
    ring, sde = sd.get_testbed("ring"), sd.get_sde("vp")
    with _shape_error((4, 3), "B, 2"):
        sd.sample(ring.model(sde), solver, 4, x_T=torch.zeros(4, 3))
    with _shape_error((4, 5), "B, 2"):
        sd.sample(ring.model(sde), solver, 4, (4, 5), seed=0)


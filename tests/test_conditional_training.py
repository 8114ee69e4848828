"""Class-conditional training and the 2-D toy quality bar.

* A class-conditional MLP trained on two labelled Gaussian blobs samples the right blob for each label.
* Label dropout (classifier-free guidance) replaces labels by the null class at the rate of its generator, exactly.
* The losses take a label-binding builder ``labels -> ScoreModel`` and reject labels with a plain ScoreModel.
* A 2-D ring model trained on CPU samples within 2x the sliced Wasserstein distance of the exact score with the
  same solver, NFE and starting noise (the issue's acceptance test).
"""
from __future__ import annotations

import pytest
import torch
from ring_training import ring_sliced_wasserstein

import scoresde as sd
from scoresde.models import EMA, MLP, Preconditioned
from scoresde.training import DSMLoss, EDMLoss, Trainer
from scoresde.training.trainer import drop_labels, fixed_labels


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train ~50x faster on one thread than on oversubscribed cores (e.g. tests run in parallel)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CENTRES = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])


def blobs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of two Gaussian blobs (std 0.3) at (∓2, 0), labelled 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(2, (n,), generator=g)
    return CENTRES[labels] + 0.3 * torch.randn(n, 2, generator=g), labels


def conditional_trainer(steps: int = 300, label_dropout: float = 0.1, **kw) -> Trainer:
    torch.manual_seed(0)
    model = Preconditioned(MLP(2, hidden=64, depth=2, num_classes=2), kind="eps")
    x, y = blobs(4096)
    opts = dict(labels=y, label_dropout=label_dropout, batch_size=128, lr=3e-3, warmup_steps=20,
                total_steps=steps, ema=EMA(model, decay=0.98), seed=1, progress=False, log_every=0,
                sample_steps=12, n_samples=400)
    return Trainer(model, sd.get_sde("vp"), DSMLoss(), x, **{**opts, **kw})


def test_conditional_mlp_samples_the_right_blob():
    tr = conditional_trainer()
    tr.train()
    for label in (0, 1):
        x = tr.sample(400, class_labels=label)
        mean = x.mean(0)
        assert torch.allclose(mean, CENTRES[label], atol=0.4), (label, mean)
        assert float((x[:, 0] * CENTRES[label, 0] > 0).float().mean()) > 0.9, label  # on the right side
    both = tr.sample(400)  # default: fixed labels, half of each class
    assert (both[:200, 0] < 0).float().mean() > 0.9 and (both[200:, 0] > 0).float().mean() > 0.9


def test_label_dropout_rate_is_exact_for_a_fixed_generator():
    n, p, null = 100_000, 0.1, 10
    labels = torch.arange(n) % null
    dropped = drop_labels(labels, p, null, torch.Generator().manual_seed(5))
    expected = int((torch.rand(n, generator=torch.Generator().manual_seed(5)) < p).sum())
    assert int((dropped == null).sum()) == expected
    assert abs(expected - p * n) < 4 * (n * p * (1 - p)) ** 0.5  # and that count is Binomial(n, p)-plausible
    kept = dropped != null
    assert torch.equal(dropped[kept], labels[kept])
    assert torch.equal(drop_labels(labels, 0.0, null, None), labels)


def test_trainer_applies_label_dropout_with_its_loss_generator():
    tr = conditional_trainer(steps=3, label_dropout=0.25, batch_size=512)
    raw, states, seen = [], [], []
    build, next_batch = tr.model.score_model, tr.next_batch

    def recording_next_batch():
        x0, labels = next_batch()
        raw.append(labels)
        states.append(tr.loss_gen.get_state())  # the dropout draw comes first from this state
        return x0, labels

    tr.next_batch = recording_next_batch
    tr.model.score_model = lambda sde, labels=None: seen.append(labels) or build(sde, labels)
    tr.train()
    assert len(seen) == 3
    for labels, state, used in zip(raw, states, seen):
        gen = torch.Generator().set_state(state)
        expected = int((torch.rand(512, generator=torch.Generator().set_state(state)) < 0.25).sum())
        assert torch.equal(used, drop_labels(labels, 0.25, 2, gen))
        assert int((used == 2).sum()) == expected and 0.15 < expected / 512 < 0.35


def test_losses_take_a_label_builder_and_reject_labels_with_a_score_model():
    model = Preconditioned(MLP(2, hidden=16, depth=1, num_classes=2), kind="eps")
    sde = sd.get_sde("vp")
    x0, y = blobs(8)
    for loss in (DSMLoss(), EDMLoss()):
        g = torch.Generator().manual_seed(0)
        a = loss(lambda labels: model.score_model(sde, labels), x0, generator=g, class_labels=y)
        b = loss(model.score_model(sde, y), x0, generator=torch.Generator().manual_seed(0))
        assert a.shape == (8,) and torch.equal(a, b)
        with pytest.raises(ValueError, match="builder"):
            loss(model.score_model(sde), x0, class_labels=y)


def test_conditional_trainer_rejects_missing_or_bad_labels():
    torch.manual_seed(0)
    cond = Preconditioned(MLP(2, hidden=16, depth=1, num_classes=2), kind="eps")
    x, y = blobs(64)
    with pytest.raises(ValueError, match="pass labels"):
        Trainer(cond, sd.get_sde("vp"), DSMLoss(), x, batch_size=8, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        Trainer(cond, sd.get_sde("vp"), DSMLoss(), x, labels=y + 1, batch_size=8, progress=False)
    plain = Preconditioned(MLP(2, hidden=16, depth=1), kind="eps")
    with pytest.raises(ValueError, match="unconditional"):
        Trainer(plain, sd.get_sde("vp"), DSMLoss(), x, labels=y, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="label_dropout"):
        Trainer(plain, sd.get_sde("vp"), DSMLoss(), x, label_dropout=0.1, batch_size=8, progress=False)
    batches = [(x[:8], y[:8])]
    tr = Trainer(cond, sd.get_sde("vp"), DSMLoss(), batches, batch_size=8, progress=False)
    xb, yb = tr.next_batch()
    assert torch.equal(yb, y[:8]) and torch.equal(xb, x[:8])
    assert torch.equal(fixed_labels(10, 3), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2]))


@pytest.mark.parametrize("seed", [0])
def test_ring_model_is_within_twice_the_exact_scores_sliced_wasserstein(seed):
    """The issue's bar: a 2-D toy trained on CPU (well under 2 minutes) samples within 2x the sliced Wasserstein
    distance that the exact score reaches with the same solver (Heun, 18 Karras steps, NFE 36) and the same x_T.

    Measured with this setup (EDM preconditioning and loss under VP, 1500 steps), seeds 0-4: SW(net)/SW(exact) =
    0.94, 0.82, 1.23, 1.22, 0.70 (2000 samples each, so SW(exact) ~0.11-0.14 is the finite-sample floor); training
    takes ~10 s on one core. (An ε-head with DSM at 1200 steps gave 1.02-1.46: less margin, hence EDM here.)"""
    sw, nfe, seconds = ring_sliced_wasserstein("vp", "edm", EDMLoss(), 1500, seed)
    assert seconds < 120
    assert nfe["net"] == nfe["exact"] == 36  # 18 Heun steps, 2 evaluations each
    assert sw["net"] < 2 * sw["exact"], sw

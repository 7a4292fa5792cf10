"""Training: a short real run learns and writes every artefact; recipes are what they claim."""

import json
import types

import pytest

# The tests that import torch share one parallel worker (`make test-fast`): each worker that
# imports it pays about 2 CPU-seconds, and the first export in a process 4 more.
pytestmark = pytest.mark.xdist_group("torch")

ARTEFACTS = [
    "model.pt",
    "final.pt",
    "config.json",
    "summary.json",
    "metrics.json",
    "metrics.csv",
    "loss.png",
    "accuracy.png",
    "samples.png",
    "confusion.png",
]


@pytest.fixture(scope="module")
def torch():
    """torch, imported by the tests that use it: collecting the suite (on every parallel
    worker) does not pay for it."""
    import torch

    return torch


@pytest.fixture(scope="module")
def train():
    from mnist_serving.train import augment, cli, model, recipes, trainer

    return types.SimpleNamespace(
        Augmentation=augment.Augmentation,
        distort=augment.distort,
        train_main=cli.main,
        MnistMLP=model.MnistMLP,
        summary=model.summary,
        get_recipe=recipes.get_recipe,
        random_shift=trainer.random_shift,
    )


def test_architecture_is_the_seeds(train):
    model = train.MnistMLP()
    assert sum(p.numel() for p in model.parameters()) == 669_706
    table = train.summary(model)
    assert "Total params: 669,706" in table and "(None, 512)" in table


def test_seed_recipe_matches_the_walkthrough(train):
    seed = train.get_recipe("seed")
    assert (seed.optimizer, seed.lr, seed.rho, seed.eps, seed.batch_size, seed.epochs) == (
        "rmsprop",
        1e-3,
        0.9,
        1e-7,
        128,
        20,
    )
    assert (seed.val_fraction, seed.checkpoint_metric) == (0.2, "val_loss")
    assert (seed.normalize_mean, seed.normalize_std) == (0.0, 1.0)
    assert (seed.augment, seed.max_shift, seed.label_smoothing) == (False, 0, 0.0)  # no extras


def test_distortions_stay_in_range_and_vary_but_vanish_at_zero(torch, train, mnist):
    images = torch.from_numpy(mnist.x_train[:64].astype("float32"))
    generator = torch.Generator().manual_seed(0)
    still = train.distort(images, train.Augmentation(0, 0, 0, 0, 0, 0), generator)
    assert torch.allclose(still, images, atol=1e-2)  # the grid maps every pixel onto itself
    moved = train.distort(images, train.Augmentation(), generator)
    assert moved.shape == images.shape and moved.min() >= 0 and moved.max() <= 255
    changed = (moved - images).abs().mean((1, 2))
    assert (changed > 1).float().mean() > 0.9  # nearly every image is distorted
    # …but keeps its ink: mass within what thickness and scale can do (not blanked, not flooded)
    ratio = moved.sum((1, 2)) / images.sum((1, 2))
    assert ratio.min() > 0.3 and ratio.max() < 2.5


def test_random_shift_moves_ink_without_changing_it(torch, train):
    image = torch.zeros(1, 28, 28)
    image[0, 14, 14] = 1.0
    shifted = train.random_shift(image.repeat(200, 1, 1), 2, torch.Generator().manual_seed(0))
    assert torch.all(shifted.sum((1, 2)) == 1.0)
    positions = {tuple(torch.nonzero(s)[0].tolist()) for s in shifted}
    assert len(positions) == 25
    assert all(12 <= r <= 16 and 12 <= c <= 16 for r, c in positions)


@pytest.mark.slow
def test_short_run_learns_and_writes_every_artefact(torch, train, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = train.train_main(
        ["--run-dir", str(run_dir), "--train-subset", "5000", "--epochs", "2", "--no-progress", "--seed", "3"]
    )
    assert code == 0
    for name in ARTEFACTS:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    report = json.loads((run_dir / "summary.json").read_text())
    assert report["test_accuracy"] > 0.5  # chance is 0.1
    assert report["untrained_test_accuracy"] < 0.2
    history = json.loads((run_dir / "metrics.json").read_text())
    assert [m["epoch"] for m in history] == [1, 2]
    state = torch.load(run_dir / "model.pt", weights_only=True)
    train.MnistMLP().load_state_dict(state)
    out = capsys.readouterr().out
    assert "Total params: 669,706" in out and "untrained test accuracy" in out


@pytest.mark.slow
def test_seed_makes_runs_reproducible(torch, train, tmp_path):
    states = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        train.train_main(
            [
                "--run-dir",
                str(run_dir),
                "--train-subset",
                "1000",
                "--epochs",
                "1",
                "--no-progress",
                "--seed",
                "7",
            ]
        )
        states.append(torch.load(run_dir / "final.pt", weights_only=True))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])

"""Tests of the recipe presets (``--recipe seed|stable``): preset values, overrides, the CLI and inspect,
and the learning-rate schedules step by step (the loop's per-step rates against the formulas)."""

from __future__ import annotations

import math

import pytest

from helpers import make_dataset, run_cli, tiny_train_config
from imgclf.cli.main import build_parser
from imgclf.cli.recipe_flags import config_from_args
from imgclf.config import RECIPES, TrainConfig
from imgclf.errors import UsageError
from imgclf.training.loop import Callback, fit
from imgclf.training.schedule import lr_at
from imgclf.training.state import create_state

STABLE = {"lr": 0.05, "schedule": "cosine", "warmup": 1.0, "nesterov": True, "label_smoothing": 0.1}
STABLE["ema"] = 0.998
STABLE["balance"] = "weights"


def test_the_seed_preset_is_the_class_defaults_so_todays_runs_are_unchanged():
    assert RECIPES["seed"] == {}
    assert TrainConfig.from_recipe("seed") == TrainConfig() == TrainConfig.from_dict({})
    cfg = TrainConfig()
    assert (cfg.recipe, cfg.schedule, cfg.warmup, cfg.nesterov, cfg.clip_norm, cfg.ema) == (
        "seed",
        "time_decay",
        0.0,
        False,
        None,
        0.0,
    )


def test_the_stable_preset_values():
    cfg = TrainConfig.from_recipe("stable")
    assert {k: getattr(cfg, k) for k in STABLE} == STABLE
    assert cfg.recipe == "stable"
    # everything the preset does not name stays the seed recipe's (architecture, batch, epochs, data)
    rest = {k: v for k, v in cfg.to_dict().items() if k not in (*STABLE, "recipe")}
    assert rest == {k: v for k, v in TrainConfig().to_dict().items() if k in rest}


def test_explicit_values_override_the_preset_and_round_trip():
    cfg = TrainConfig.from_recipe("stable", lr=0.02, ema=0.0, epochs=7)
    assert (cfg.lr, cfg.ema, cfg.epochs, cfg.schedule, cfg.nesterov) == (0.02, 0.0, 7, "cosine", True)
    assert TrainConfig.from_dict({"recipe": "stable", "lr": 0.02, "ema": 0, "epochs": 7}) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # a full dict (a run record) keeps its values
    seedlike = TrainConfig.from_recipe("stable", **{k: getattr(TrainConfig(), k) for k in STABLE})
    assert seedlike.to_dict() == {**TrainConfig().to_dict(), "recipe": "stable"}


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"recipe": "fast"}, "unknown recipe"),
        ({"schedule": "step"}, "unknown schedule"),
        ({"warmup": -1.0}, "setting 'warmup' is out of range"),
        ({"ema": 1.0}, "setting 'ema' is out of range"),
        ({"clip_norm": 0.0}, "setting 'clip_norm' is out of range"),
    ],
)
def test_bad_recipe_settings_are_usage_errors(changes, problem):
    with pytest.raises(UsageError) as info:
        TrainConfig.from_dict(changes)
    assert str(info.value).startswith(problem)


def _cli_config(*flags: str, start: dict | None = None) -> TrainConfig:
    args = build_parser().parse_args(["train", "--dataset", "d", "--model", "m.imgclf", *flags])
    return config_from_args(args, start)


def test_cli_recipe_flag_then_single_flags_override_it(tmp_path):
    assert _cli_config() == TrainConfig()
    assert _cli_config("--recipe", "stable") == TrainConfig.from_recipe("stable")
    cfg = _cli_config("--recipe", "stable", "--lr", "0.02", "--no-nesterov", "--ema", "0", "--clip-norm", "5")
    assert cfg == TrainConfig.from_recipe("stable", lr=0.02, nesterov=False, ema=0.0, clip_norm=5.0)
    assert _cli_config("--schedule", "cosine", "--warmup", "2") == TrainConfig(schedule="cosine", warmup=2.0)
    config_file = tmp_path / "c.json"
    config_file.write_text('{"recipe": "stable", "epochs": 9}')
    assert _cli_config("--config", str(config_file)) == TrainConfig.from_recipe("stable", epochs=9)
    # a resumed run's full record keeps its values; naming another recipe only relabels (then refused)
    record = TrainConfig.from_recipe("stable").to_dict()
    assert _cli_config(start=record) == TrainConfig.from_recipe("stable")
    assert _cli_config("--recipe", "seed", start=record).recipe == "seed"


def test_train_help_documents_the_recipes():
    code, out, _ = run_cli("train", "--help")
    assert code == 0
    assert "--recipe {seed,stable,finetune}" in out and "--ema N" in out
    assert "--schedule {time_decay,cosine,one_cycle}" in out


def test_inspect_shows_the_recipe_and_what_the_run_changed(tmp_path):
    data = make_dataset(tmp_path / "data", {"training": 8, "validation": 2, "testing": 2})
    model = tmp_path / "m.imgclf"
    flags = ["--arch", "small_cnn", "--arch-arg", "widths=[8,16]", "--size", "32", "--batch-size", "8"]
    flags += ["--device", "cpu", "--precision", "fp32", "--epochs", "1", "--recipe", "stable", "--lr", "0.02"]
    code, _, err = run_cli("train", "--dataset", data, "--model", model, *flags)
    assert code == 0, err
    code, out, _ = run_cli("inspect", model)
    assert code == 0
    assert "recipe          stable, changed: epochs 1, batch_size 8, lr 0.02\n" in out


def test_inspect_of_a_seed_file_says_seed(tiny_model):
    code, out, _ = run_cli("inspect", tiny_model.model_path)
    assert code == 0 and "recipe          seed, changed: epochs 2, batch_size 8\n" in out


# --- schedules -------------------------------------------------------------------------------------


def test_time_decay_is_unchanged():
    cfg = TrainConfig()
    for step in range(300):
        assert lr_at(cfg, step, 11) == 0.1 / (1.0 + (0.1 / 25) * step)


@pytest.mark.parametrize("warmup, epochs, steps", [(1.0, 3, 5), (0.5, 4, 3), (0.0, 2, 4), (10.0, 2, 3)])
def test_cosine_with_warmup_is_the_formula_at_every_step(warmup, epochs, steps):
    cfg = TrainConfig.from_recipe("stable", warmup=warmup, epochs=epochs)
    total, warm = epochs * steps, min(round(warmup * steps), epochs * steps)
    expected = [
        0.05 * ((s + 1) / warm)
        if s < warm
        else 0.05 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        for s in range(total)
    ]
    assert [lr_at(cfg, s, steps) for s in range(total)] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    if warm:
        assert lr_at(cfg, warm - 1, steps) == 0.05  # warm-up ends at the peak
    if warm < total:
        assert lr_at(cfg, warm, steps) == 0.05 and 0 < lr_at(cfg, total - 1, steps) < 0.05 * 0.05
    assert lr_at(cfg, total + 5, steps) == 0.0  # past the end (a resume with fewer epochs): zero


class _Rates(Callback):
    """Records the learning rate the optimizer used at each step."""

    def on_train_begin(self, config, state, steps, device):
        self.state, self.rates = state, []

    def on_step_end(self, step, steps, loss):
        self.rates.append(self.state.optimizer.param_groups[0]["lr"])


def test_the_loop_uses_the_schedule_at_every_step(tmp_path):
    from imgclf.data.decode import load_split
    from imgclf.data.folders import scan_dataset

    root = make_dataset(tmp_path / "data", {"training": 12, "validation": 2})
    cfg = tiny_train_config(epochs=3).replace(recipe="stable", **STABLE)
    ds = scan_dataset(root, test_split=0.0)
    train, val = (load_split(ds.splits[s], cfg.preprocess) for s in ("training", "validation"))
    rates = _Rates()
    fit(cfg, create_state(cfg, 2), train, val, callbacks=[rates])
    assert rates.rates == [lr_at(cfg, s, 3) for s in range(9)]  # 24 images / batch 8: 3 steps per epoch
    assert rates.rates[2] == 0.05 and rates.rates[0] == pytest.approx(0.05 / 3)

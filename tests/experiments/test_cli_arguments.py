"""Argument errors of ``python -m experiments compare``: clear messages, exit status 2."""

from __future__ import annotations

import sys

import pytest
import torch

from experiments.cli import build_parser, main


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["compare", "--losses", "ce", "hinge"],
            "argument --losses: Expected argument `losses` to be a loss spec NAME[:KEY=VALUE,...] "
            "with NAME one of ('ce', 'fairloss', 'fairloss-pll', 'ce-label-smoothing', 'focal', "
            "'poly1'), but got the name 'hinge' in 'hinge'.",
        ),
        (
            ["compare", "--losses", "ce", "fairloss:scaling_factor=10,beta=3"],
            "argument --losses: Expected argument `losses` to be a key of 'fairloss', one of "
            "('scaling_factor', 'smooth_max_beta', 'penalty_scale', 'label_smoothing'), but got "
            "the key 'beta' in 'fairloss:scaling_factor=10,beta=3'.",
        ),
        (
            ["compare", "--losses", "focal:gamma=-2"],
            "argument --losses: Expected argument `gamma` to be a finite number larger than or "
            "equal to 0, but got -2.0.",
        ),
        (
            ["compare", "--noise-type", "asymmetric"],
            "argument --noise-type: invalid choice: 'asymmetric' (choose from",
        ),
        (["compare", "--dataset", "imagenet"], "argument --dataset: invalid choice: 'imagenet'"),
        (
            ["compare", "--noise", "0.3", "1.5"],
            "argument --noise: Expected argument `noise` to be a number in [0, 1], but got '1.5'.",
        ),
        (
            ["compare", "--noise", "lots"],
            "Expected argument `noise` to be a number in [0, 1], but got 'lots'.",
        ),
        (
            ["compare", "--seeds", "-1"],
            "Expected argument `seeds` to be an integer of at least 0, but got '-1'.",
        ),
        (
            ["compare", "--epochs", "0"],
            "Expected argument `epochs` to be an integer of at least 1, but got '0'.",
        ),
        (
            ["compare", "--batch-size", "1.5"],
            "Expected argument `batch-size` to be an integer of at least 1, but got '1.5'.",
        ),
        (
            ["compare", "--lr=-1e-3"],
            "Expected argument `lr` to be a number larger than 0, but got '-1e-3'.",
        ),
        (
            ["compare", "--device", "toaster"],
            "Expected argument `device` to be a torch device such as 'cpu'",
        ),
        (
            ["compare", "--threads", "0"],
            "Expected argument `threads` to be an integer of at least 1",
        ),
        (["compare", "--losses"], "argument --losses: expected at least one argument"),
        ([], "the following arguments are required: command"),
        (["train"], "argument command: invalid choice: 'train'"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in _usage_error(argv, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_device_the_machine_lacks_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    error = _usage_error(["compare", "--device", "cuda", "--epochs", "1"], capsys)
    assert "Expected argument `device` to be a device this machine has, but got 'cuda'" in error


def test_defaults_are_the_demo_configuration() -> None:
    args = build_parser().parse_args(["compare"])
    assert args.dataset == "digits"
    assert args.losses == ["ce", "fairloss", "fairloss-pll", "ce-label-smoothing"]
    assert args.noise == [0.0, 0.3] and args.seeds == [0, 1, 2]
    assert (args.epochs, args.batch_size, args.lr, args.threads) == (100, 128, 1e-3, 1)
    assert str(args.out) == "results" and args.device == torch.device("cpu") and not args.quiet
    assert args.noise_type == "symmetric"


def test_loss_specs_are_parsed_into_canonical_text() -> None:
    args = build_parser().parse_args(
        ["compare", "--losses", "ce", "focal:gamma=2.0", "fairloss:penalty_scale=log(C)"]
    )
    assert args.losses == ["ce", "focal:gamma=2", "fairloss:penalty_scale=logC"]


def test_help_lists_every_loss_name_and_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "10000")  # no wrapping (argparse breaks lines at hyphens)
    for command in ("compare", "study"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "NAME:KEY=VALUE,KEY=VALUE" in help_text
        for name_and_keys in (
            "ce: cross-entropy (F.cross_entropy); keys: label_smoothing [0]",
            "fairloss: FairLoss, by default with its library defaults (penalty_scale = 1/C); "
            "keys: scaling_factor [1000], smooth_max_beta [1000], penalty_scale [1/C], "
            "label_smoothing [0]",
            "fairloss-pll:",
            "penalty_scale [logC]",
            "ce-label-smoothing:",
            "focal: multi-class focal loss -(1 - p_y)^gamma log p_y (Lin et al. 2017); keys: "
            "gamma [2]",
            "poly1: Poly-1: cross-entropy + epsilon (1 - p_y) (Leng et al. 2022); keys: "
            "epsilon [1]",
        ):
            assert name_and_keys in help_text, (command, name_and_keys)


def test_a_missing_demo_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import experiments
    import experiments.runner

    # Pretend tqdm is not installed, and make the runner module import afresh.
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.delitem(sys.modules, "experiments.runner")
    monkeypatch.delattr(experiments, "runner")

    assert main(["compare", "--quiet"]) == 1
    error = capsys.readouterr().err
    prog = "python -m experiments compare"
    assert f"{prog}: error: {prog} needs tqdm, which is not installed." in error
    assert 'pip install "pytorch-fairloss[demo]"' in error

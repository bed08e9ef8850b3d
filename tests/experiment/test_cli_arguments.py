"""Argument errors of ``fairloss compare``: a clear message and argparse's exit status 2."""

from __future__ import annotations

import sys

import pytest
import torch

from fairloss.cli import build_parser, main


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["compare", "--losses", "ce", "focal"],
            "argument --losses: invalid choice: 'focal' (choose from",
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


def test_a_missing_demo_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import fairloss.experiment as experiment_package
    import fairloss.experiment.runner  # noqa: F401 (so that there is a module to remove)

    # Pretend tqdm is not installed, and make the runner module import afresh.
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.delitem(sys.modules, "fairloss.experiment.runner")
    monkeypatch.delattr(experiment_package, "runner")

    assert main(["compare", "--quiet"]) == 1
    error = capsys.readouterr().err
    assert "fairloss compare: error: fairloss compare needs tqdm, which is not installed." in error
    assert 'pip install "pytorch-fairloss[demo]"' in error

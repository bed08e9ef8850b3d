"""fairloss.integrations.transformers: FairLoss through Transformers' own loss hook.

With ``scaling_factor=0`` FairLoss is cross-entropy, so the model's own loss is an exact oracle
for everything the hook must honour (label shift, ``shift_labels``, ``ignore_index``,
``num_items_in_batch``), fused or not, value and every parameter gradient. With the default
options the oracles are ``fair_loss`` and the float64 reference on the unfused logits.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from typing import Any, Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.testing import assert_close
from torchmetrics.functional.classification import multiclass_calibration_error
from transformers import OPTConfig, OPTForCausalLM

from fairloss.integrations.transformers import (
    FUSED_ARCHITECTURES,
    FairLossCausalLMHook,
    fair_loss_metrics,
    use_fair_loss,
)
from tests.integrations.models import (
    CAUSAL_LM_FAMILIES,
    NUM_LABELS,
    VOCAB_SIZE,
    causal_lm,
    sequence_classifier,
    token_batch,
)
from tests.reference import fair_loss_reference

CROSS_ENTROPY: dict[str, Any] = {"scaling_factor": 0.0}
#: A penalty large enough to move the loss and its gradients (the default height is 1 / V).
STRONG: dict[str, Any] = {"smooth_max_beta": 30.0, "scaling_factor": 20.0, "penalty_scale": 1.0}
#: Fused and unfused float32 sum the same numbers in another order.
GRADIENT_RTOL, GRADIENT_ATOL = 1e-4, 1e-6


def _ignored(labels: Tensor, every: int = 4) -> Tensor:
    ignored = labels.clone()
    ignored.view(-1)[::every] = -100
    return ignored


def _loss_cases() -> dict[str, dict[str, Any]]:
    """Keyword arguments of the forward, with ``labels``, for each thing Transformers passes."""
    input_ids = token_batch()
    shifted = token_batch(seed=2) % VOCAB_SIZE
    return {
        "plain": {"input_ids": input_ids, "labels": input_ids},
        "ignored": {"input_ids": input_ids, "labels": _ignored(input_ids)},
        "num_items_in_batch": {
            "input_ids": input_ids,
            "labels": _ignored(input_ids),
            "num_items_in_batch": torch.tensor(50),
        },
        "shift_labels": {
            "input_ids": input_ids,
            "labels": input_ids,
            "shift_labels": _ignored(shifted, every=3),
        },
    }


LOSS_CASES = tuple(_loss_cases())


def _loss_and_gradients(model: Any, arguments: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    model.zero_grad(set_to_none=True)
    output = model(**arguments)
    output.loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return output.loss.detach(), gradients


def _assert_same_gradients(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, gradient in expected.items():
        assert_close(
            actual[name],
            gradient,
            rtol=GRADIENT_RTOL,
            atol=GRADIENT_ATOL,
            msg=f"gradient of {name}",
        )


# --- scaling_factor=0: equal to Transformers' own loss, value and every gradient -------------


@pytest.mark.parametrize("case", LOSS_CASES)
@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused"])
@pytest.mark.parametrize("family", tuple(CAUSAL_LM_FAMILIES))
def test_causal_lm_without_penalty_equals_transformers_loss(
    family: str, fused: bool, case: str
) -> None:
    reference = causal_lm(family)
    model = use_fair_loss(copy.deepcopy(reference), fused=fused, **CROSS_ENTROPY)
    arguments = _loss_cases()[case]
    expected_loss, expected_gradients = _loss_and_gradients(reference, arguments)
    loss, gradients = _loss_and_gradients(model, arguments)
    assert_close(loss, expected_loss)
    _assert_same_gradients(gradients, expected_gradients)


@pytest.mark.parametrize("family", tuple(CAUSAL_LM_FAMILIES))
def test_fused_training_forward_has_no_logits(family: str) -> None:
    model = use_fair_loss(causal_lm(family), fused=True)
    input_ids = token_batch()
    output = model(input_ids=input_ids, labels=input_ids)
    assert output.logits is None
    assert output.loss.requires_grad


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_fused_model_without_labels_or_in_eval_runs_its_own_forward(family: str) -> None:
    reference = causal_lm(family)
    model = use_fair_loss(copy.deepcopy(reference), fused=True)
    input_ids = token_batch()
    assert_close(model(input_ids=input_ids).logits, reference(input_ids=input_ids).logits)
    model.eval()
    fused_reference = copy.deepcopy(model).train()
    output = model(input_ids=input_ids, labels=input_ids)
    assert_close(output.logits, reference(input_ids=input_ids).logits)
    # Eval mode: the loss from the logits, the same value as the fused training loss.
    assert_close(output.loss, fused_reference(input_ids=input_ids, labels=input_ids).loss)


@pytest.mark.parametrize("num_items_in_batch", [None, 7], ids=["mean", "num_items"])
def test_classifier_without_penalty_equals_transformers_loss(
    num_items_in_batch: Optional[int],
) -> None:
    reference = sequence_classifier()
    model = use_fair_loss(copy.deepcopy(reference), **CROSS_ENTROPY)
    arguments: dict[str, Any] = {
        "input_ids": token_batch(batch=6),
        "labels": torch.tensor([0, 4, 2, 2, 1, 3]),
    }
    if num_items_in_batch is not None:
        arguments["num_items_in_batch"] = num_items_in_batch
    expected_loss, expected_gradients = _loss_and_gradients(reference, arguments)
    loss, gradients = _loss_and_gradients(model, arguments)
    assert model.config.problem_type == reference.config.problem_type
    assert model.config.problem_type == "single_label_classification"
    assert_close(loss, expected_loss)
    _assert_same_gradients(gradients, expected_gradients)


@pytest.mark.parametrize(
    ("num_labels", "labels", "problem_type"),
    [
        (1, torch.tensor([0.5, -1.0, 2.0]), "regression"),
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), "multi_label"),
    ],
    ids=["regression", "multi_label"],
)
def test_classifier_keeps_transformers_loss_for_other_problem_types(
    num_labels: int, labels: Tensor, problem_type: str
) -> None:
    reference = sequence_classifier(num_labels=num_labels)
    model = use_fair_loss(copy.deepcopy(reference))  # default options: a real penalty
    arguments = {"input_ids": token_batch(batch=3), "labels": labels}
    expected_loss, expected_gradients = _loss_and_gradients(reference, arguments)
    loss, gradients = _loss_and_gradients(model, arguments)
    assert model.config.problem_type.startswith(problem_type)
    assert_close(loss, expected_loss)
    _assert_same_gradients(gradients, expected_gradients)


# --- default options: FairLoss itself -------------------------------------------------------


@pytest.mark.parametrize("case", LOSS_CASES)
@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_causal_lm_loss_is_fair_loss_of_the_shifted_logits(family: str, case: str) -> None:
    reference = causal_lm(family)
    model = use_fair_loss(copy.deepcopy(reference), **STRONG)
    arguments = _loss_cases()[case]
    loss = model(**arguments).loss
    with torch.no_grad():
        logits = reference(input_ids=arguments["input_ids"]).logits.double()
    shift_labels = arguments.get("shift_labels")
    if shift_labels is None:
        shift_labels = torch.cat(
            [arguments["labels"][:, 1:], torch.full_like(arguments["labels"][:, :1], -100)], dim=1
        )
    rows, targets = logits.reshape(-1, VOCAB_SIZE), shift_labels.reshape(-1)
    if "num_items_in_batch" in arguments:
        expected = fair_loss_reference(rows, targets, reduction="sum", **STRONG)
        expected = expected / arguments["num_items_in_batch"]
    else:
        expected = fair_loss_reference(rows, targets, **STRONG)
    penalty_free = F.cross_entropy(rows, targets, reduction="sum") / (targets != -100).sum()
    if "num_items_in_batch" not in arguments:
        assert float(expected) > float(penalty_free) + 0.1  # the penalty is there
    assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "options", [{}, {**STRONG, "label_smoothing": 0.1}], ids=["default", "strong"]
)
@pytest.mark.parametrize("case", LOSS_CASES)
@pytest.mark.parametrize("family", tuple(CAUSAL_LM_FAMILIES))
def test_fused_equals_unfused(family: str, case: str, options: dict[str, Any]) -> None:
    unfused = use_fair_loss(causal_lm(family), **options)
    fused = use_fair_loss(causal_lm(family), fused=True, chunk_size=5, **options)
    arguments = _loss_cases()[case]
    expected_loss, expected_gradients = _loss_and_gradients(unfused, arguments)
    loss, gradients = _loss_and_gradients(fused, arguments)
    assert_close(loss, expected_loss)
    _assert_same_gradients(gradients, expected_gradients)


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused"])
@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_z_loss_adds_the_squared_log_partition(family: str, fused: bool) -> None:
    """scaling_factor=0 and z_loss_scale: cross-entropy + z * logsumexp(z)**2, value and gradients.

    For Gemma 2 the logits are the capped ones, in both paths (fused: capped in the chunks).
    """
    z_loss_scale = 1e-2
    reference = causal_lm(family)
    model = use_fair_loss(
        copy.deepcopy(reference), fused=fused, scaling_factor=0.0, z_loss_scale=z_loss_scale
    )
    arguments = _loss_cases()["ignored"]
    loss, gradients = _loss_and_gradients(model, arguments)

    reference.zero_grad(set_to_none=True)
    logits = reference(input_ids=arguments["input_ids"]).logits
    labels = arguments["labels"]
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1).reshape(-1)
    rows = logits.reshape(-1, VOCAB_SIZE)
    kept = targets != -100
    expected = F.cross_entropy(rows, targets) + z_loss_scale * (
        torch.logsumexp(rows[kept], dim=1).square().mean()
    )
    expected.backward()
    expected_gradients = {
        name: p.grad for name, p in reference.named_parameters() if p.grad is not None
    }
    assert_close(loss, expected.detach())
    _assert_same_gradients(gradients, expected_gradients)


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused"])
def test_num_items_in_batch_accumulates_to_the_full_batch_mean(fused: bool) -> None:
    """Gradient accumulation: micro-batch losses summed over num_items equal one big batch."""
    input_ids = token_batch(batch=4)
    labels = _ignored(input_ids, every=3)
    full = use_fair_loss(causal_lm("llama"), fused=fused, **STRONG)
    expected_loss, expected_gradients = _loss_and_gradients(
        full, {"input_ids": input_ids, "labels": labels}
    )
    model = use_fair_loss(causal_lm("llama"), fused=fused, **STRONG)
    num_items = (labels[:, 1:] != -100).sum()
    model.zero_grad(set_to_none=True)
    total = torch.zeros(())
    for rows in (slice(0, 1), slice(1, 4)):
        loss = model(input_ids=input_ids[rows], labels=labels[rows], num_items_in_batch=num_items)
        loss.loss.backward()
        total += loss.loss.detach()
    assert_close(total, expected_loss)
    gradients = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    _assert_same_gradients(gradients, expected_gradients)


def test_classifier_loss_is_fair_loss_with_the_options() -> None:
    reference = sequence_classifier()
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0])
    options: dict[str, Any] = {"weight": weight, "label_smoothing": 0.1, "scaling_factor": 5.0}
    model = use_fair_loss(copy.deepcopy(reference), **options)
    input_ids, labels = token_batch(batch=6), torch.tensor([0, 4, 2, -100, 1, 3])
    loss = model(input_ids=input_ids, labels=labels).loss
    with torch.no_grad():
        logits = reference(input_ids=input_ids).logits.double()
    expected = fair_loss_reference(logits, labels, weight.double(), **options_without(options))
    assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def options_without(options: dict[str, Any], name: str = "weight") -> dict[str, Any]:
    return {key: value for key, value in options.items() if key != name}


# --- the adapter's contract ------------------------------------------------------------------


def test_only_this_instance_changes() -> None:
    reference = causal_lm("llama")
    other = copy.deepcopy(reference)
    model = use_fair_loss(copy.deepcopy(reference), fused=True)
    input_ids = token_batch()
    assert "forward" not in vars(other)
    assert not isinstance(other.loss_function, FairLossCausalLMHook)
    assert_close(
        other(input_ids=input_ids, labels=input_ids).loss,
        reference(input_ids=input_ids, labels=input_ids).loss,
    )
    assert model(input_ids=input_ids, labels=input_ids).logits is None


def test_a_deep_copy_of_a_fused_model_is_fused_on_itself() -> None:
    model = use_fair_loss(causal_lm("llama"), fused=True)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.lm_head.weight.mul_(2.0)
    input_ids = token_batch()
    output = twin(input_ids=input_ids, labels=input_ids)
    assert output.logits is None
    assert output.loss.item() != pytest.approx(
        model(input_ids=input_ids, labels=input_ids).loss.item()
    )
    assert twin.lm_head.weight.grad is None
    output.loss.backward()
    assert twin.lm_head.weight.grad is not None
    assert model.lm_head.weight.grad is None


def test_calling_again_replaces_the_options_and_can_unfuse() -> None:
    reference = causal_lm("llama")
    model = use_fair_loss(copy.deepcopy(reference), fused=True, scaling_factor=5.0)
    model = use_fair_loss(model, **CROSS_ENTROPY)
    assert "forward" not in vars(model)
    input_ids = token_batch()
    output = model(input_ids=input_ids, labels=input_ids)
    assert output.logits is not None
    assert_close(output.loss, reference(input_ids=input_ids, labels=input_ids).loss)


def test_return_dict_false_returns_a_tuple_with_the_loss_first() -> None:
    model = use_fair_loss(causal_lm("llama"), fused=True)
    input_ids = token_batch()
    output = model(input_ids=input_ids, labels=input_ids, return_dict=False)
    assert isinstance(output, tuple)
    assert_close(output[0], model(input_ids=input_ids, labels=input_ids).loss)


def test_importing_fairloss_does_not_import_transformers() -> None:
    code = (
        "import sys, fairloss, fairloss.integrations, fairloss.metrics\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    # A fresh interpreter, so that nothing this process imported counts; a safety limit only.
    subprocess.run([sys.executable, "-c", code], check=True, timeout=900)


def test_fused_architectures_are_the_tested_ones() -> None:
    tested = {model_class.__name__ for model_class, _ in CAUSAL_LM_FAMILIES.values()}
    assert set(FUSED_ARCHITECTURES) == tested


# --- errors ----------------------------------------------------------------------------------


def test_unknown_option_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="'scale'"):
        use_fair_loss(causal_lm("llama"), scale=2.0)
    with pytest.raises(TypeError, match="'chunk_size'"):  # a fused-only option
        use_fair_loss(causal_lm("llama"), chunk_size=8)
    with pytest.raises(TypeError, match="'reduction'"):  # Transformers decides it
        use_fair_loss(sequence_classifier(), reduction="sum")


def test_bad_option_values_fail_now() -> None:
    with pytest.raises(ValueError, match="scaling_factor"):
        use_fair_loss(causal_lm("llama"), scaling_factor=-1.0)
    with pytest.raises(ValueError, match="weight"):
        use_fair_loss(sequence_classifier(), weight=torch.ones(NUM_LABELS + 1))
    with pytest.raises(ValueError, match="chunk_size"):
        use_fair_loss(causal_lm("llama"), fused=True, chunk_size=0)
    with pytest.raises(TypeError, match="fused"):
        use_fair_loss(causal_lm("llama"), fused=1)  # type: ignore[arg-type]


def test_fused_unknown_architecture_names_the_model() -> None:
    config = OPTConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=16,
        ffn_dim=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        word_embed_proj_dim=16,
    )
    model = OPTForCausalLM(config)
    with pytest.raises(ValueError, match="OPTForCausalLM"):
        use_fair_loss(model, fused=True)
    use_fair_loss(model)  # the logits path works for any causal LM
    input_ids = token_batch()
    assert torch.isfinite(model(input_ids=input_ids, labels=input_ids).loss)


def test_models_without_a_fair_loss_hook_are_refused() -> None:
    from transformers import LlamaConfig, LlamaForTokenClassification

    from tests.integrations.models import SMALL

    model = LlamaForTokenClassification(LlamaConfig(vocab_size=VOCAB_SIZE, **SMALL))
    with pytest.raises(ValueError, match="LlamaForTokenClassification"):
        use_fair_loss(model)
    with pytest.raises(ValueError, match="fused"):
        use_fair_loss(sequence_classifier(), fused=True)


# --- fair_loss_metrics ------------------------------------------------------------------------


def _expected_metrics(logits: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, float]:
    """The metrics from their definitions, float64, on kept rows (N, C) and labels (N)."""
    num_classes = logits.shape[1]
    probs = torch.softmax(logits.double(), dim=1)
    true_probability = probs.gather(1, labels[:, None]).squeeze(1)
    wrong = (probs > true_probability[:, None]).any(dim=1).double()
    nll = -true_probability.log()
    brier = (probs - F.one_hot(labels, num_classes).double()).square().sum(dim=1)
    return {
        "accuracy": float((probs.argmax(dim=1) == labels).double().mean()),
        "nll": float(nll.mean()),
        "pll": float((nll + math.log(num_classes) * wrong).mean()),
        "pbs": float((brier + (num_classes - 1) / num_classes * wrong).mean()),
        "ece": float(
            multiclass_calibration_error(probs.float(), labels, num_classes, n_bins=n_bins)
        ),
    }


def test_metrics_of_classification_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=generator) * 2
    labels = torch.randint(0, 7, (50,), generator=generator)
    labels[::9] = -100
    metrics = fair_loss_metrics(n_bins=10)((logits.numpy(), labels.numpy()))
    kept = labels != -100
    expected = _expected_metrics(logits[kept], labels[kept], n_bins=10)
    assert metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name
    assert metrics["pll"] > metrics["nll"]


def test_metrics_of_causal_lm_logits_shift_the_labels() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 9, 11, generator=generator) * 3
    labels = torch.randint(0, 11, (3, 9), generator=generator)
    labels[0, 5:] = -100  # padding, as Trainer pads labels
    # A tuple of predictions, as when the model returns more than logits.
    eval_pred = ((logits.numpy(), np.zeros((3, 9, 2))), labels.numpy())
    metrics = fair_loss_metrics(shift_labels=True)(eval_pred)
    rows, targets = logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1)
    kept = targets != -100
    expected = _expected_metrics(rows[kept], targets[kept])
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name
    unshifted = fair_loss_metrics()(eval_pred)  # token classification: no shift
    assert unshifted["nll"] != pytest.approx(metrics["nll"])


def test_metrics_of_many_rows_are_chunked_exactly() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(5000, 3, generator=generator)
    labels = torch.randint(0, 3, (5000,), generator=generator)
    metrics = fair_loss_metrics()((logits, labels))
    expected = _expected_metrics(logits, labels)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name


def test_metrics_errors() -> None:
    with pytest.raises(ValueError, match="n_bins"):
        fair_loss_metrics(n_bins=0)
    with pytest.raises(TypeError, match="shift_labels"):
        fair_loss_metrics(shift_labels=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape \(4, 3\).*shape \(5,\)"):
        fair_loss_metrics()((np.zeros((4, 3)), np.zeros(5, dtype=np.int64)))
    with pytest.raises(ValueError, match="shift_labels=True"):
        fair_loss_metrics(shift_labels=True)((np.zeros((4, 3)), np.zeros(4, dtype=np.int64)))
    empty = fair_loss_metrics()((np.zeros((2, 3)), np.full(2, -100)))
    assert all(math.isnan(value) for value in empty.values())


def test_metrics_without_torchmetrics_say_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "torchmetrics.classification", None)
    # fairloss.metrics.modules (ClassificationScores) imports afresh, and finds no torchmetrics
    monkeypatch.delitem(sys.modules, "fairloss.metrics.modules", raising=False)
    with pytest.raises(ImportError, match=r"pytorch-fairloss\[transformers\]"):
        fair_loss_metrics()

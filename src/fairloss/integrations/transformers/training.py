"""``use_fair_loss``: FairLoss as a Transformers model's training loss, through its own hooks."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.loss.loss_utils import (
    LOSS_MAPPING,
    ForCausalLMLoss,
    ForSequenceClassificationLoss,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from fairloss._validation import (
    IMPLEMENTATIONS,
    OPTION_NAMES,
    check_choice,
    check_chunk_size,
    check_option_names,
    check_weight,
    expected,
    resolve_options,
)
from fairloss.functional import fair_loss, linear_fair_loss

__all__ = [
    "FUSED_ARCHITECTURES",
    "FairLossCausalLMHook",
    "FairLossClassificationHook",
    "FusedArchitecture",
    "use_fair_loss",
]

#: The options ``use_fair_loss`` passes on: ``fair_loss``'s, but for ``ignore_index`` and
#: ``reduction``, which Transformers decides; with ``fused=True`` also ``chunk_size``.
_OPTIONS = ("weight", *(name for name in OPTION_NAMES if name != "ignore_index"), "impl")


@dataclasses.dataclass(frozen=True)
class FusedArchitecture:
    """What the fused forward needs to know about a causal-LM class beyond the common layout.

    The common layout, shared by the classes of :data:`FUSED_ARCHITECTURES`: the decoder is
    ``model.base_model`` and returns ``last_hidden_state``; the head is ``model.lm_head``, an
    ``nn.Linear``; the logits are ``lm_head(hidden_states)``, then, when
    ``softcap_attribute`` names a config attribute that is not ``None``, capped as
    ``cap * tanh(logits / cap)``.

    Args:
        softcap_attribute (str, optional): the config attribute holding the final logit
            softcapping, or ``None`` for models without one. Default: ``None``.
    """

    softcap_attribute: Optional[str] = None


#: The causal-LM classes ``use_fair_loss(model, fused=True)`` knows, by class name. Each is
#: tested for value and gradient parity with the model's own loss.
FUSED_ARCHITECTURES: dict[str, FusedArchitecture] = {
    "LlamaForCausalLM": FusedArchitecture(),
    "MistralForCausalLM": FusedArchitecture(),
    "Qwen2ForCausalLM": FusedArchitecture(),
    "Qwen3ForCausalLM": FusedArchitecture(),
    "Gemma2ForCausalLM": FusedArchitecture(softcap_attribute="final_logit_softcapping"),
}


def _reduce(
    loss_function: Callable[..., Tensor], num_items_in_batch: Optional[Any], **arguments: Any
) -> Tensor:
    """Transformers' reduction: the mean, or the sum divided by ``num_items_in_batch``."""
    if num_items_in_batch is None:
        return loss_function(reduction="mean", **arguments)
    total = loss_function(reduction="sum", **arguments)
    if isinstance(num_items_in_batch, Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def _shifted_labels(labels: Tensor, ignore_index: int) -> Tensor:
    """The label of position ``t + 1`` at position ``t``; ``ignore_index`` at the last one."""
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


@dataclasses.dataclass
class FairLossCausalLMHook:
    """FairLoss in place of ``ForCausalLMLoss``: set as a causal LM's ``loss_function``.

    Called by the model as ``loss_function(logits, labels, vocab_size, **kwargs)``; it honours
    the arguments Transformers' ``ForCausalLMLoss`` takes, with the same meaning: ``labels`` are
    shifted left by one (position ``t`` predicts label ``t + 1``, the last position is ignored)
    unless ``shift_labels`` gives the shifted labels; ``ignore_index`` (``-100``); the logits are
    upcast to float32; ``num_items_in_batch`` given: the sum of the losses divided by it (what
    gradient accumulation needs), else their mean over the non-ignored positions. Other keyword
    arguments are ignored, as there.

    :func:`use_fair_loss` builds it; it holds the FairLoss options, and for a fused model the
    fused path's settings. :meth:`fused_loss` is the loss from hidden states and the head.

    Args:
        options (dict): keyword arguments for :func:`fairloss.fair_loss`.
        fused_options (dict, optional): keyword arguments for
            :func:`fairloss.linear_fair_loss` in the fused path; ``None`` when the model
            is not fused. Default: ``None``.
        softcap_attribute (str, optional): the config attribute of the final logit softcapping
            (fused path). Default: ``None``.
    """

    options: dict[str, Any]
    fused_options: Optional[dict[str, Any]] = None
    softcap_attribute: Optional[str] = None

    def __call__(
        self,
        logits: Tensor,
        labels: Tensor,
        vocab_size: int,
        num_items_in_batch: Optional[Any] = None,
        ignore_index: int = -100,
        shift_labels: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> Tensor:
        if shift_labels is None:
            shift_labels = _shifted_labels(labels, ignore_index)
        rows = logits.float().reshape(-1, vocab_size)
        targets = shift_labels.reshape(-1).to(rows.device)
        return _reduce(
            fair_loss,
            num_items_in_batch,
            input=rows,
            target=targets,
            ignore_index=ignore_index,
            **self.options,
        )

    def fused_loss(
        self,
        hidden_states: Tensor,
        head: torch.nn.Linear,
        labels: Tensor,
        *,
        softcap: Optional[float] = None,
        num_items_in_batch: Optional[Any] = None,
        ignore_index: int = -100,
        shift_labels: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> Tensor:
        """The loss of :meth:`__call__` from the hidden states and the head, never the logits.

        ``hidden_states`` :math:`(B, T, H)` and ``head`` (weight :math:`(V, H)`) go to
        :func:`fairloss.linear_fair_loss` with the shifted labels, ``softcap`` included.
        """
        if shift_labels is None:
            shift_labels = _shifted_labels(labels, ignore_index)
        weight = head.weight
        states = hidden_states.to(weight.dtype).reshape(-1, weight.shape[1])
        targets = shift_labels.reshape(-1).to(states.device)
        extra: dict[str, Any] = {} if softcap is None else {"softcap": softcap}
        return _reduce(
            linear_fair_loss,
            num_items_in_batch,
            input=states,
            linear_weight=weight,
            target=targets,
            linear_bias=head.bias,
            ignore_index=ignore_index,
            **extra,
            **(self.fused_options or {}),
        )


@dataclasses.dataclass
class FairLossClassificationHook:
    """FairLoss in place of ``ForSequenceClassificationLoss`` for single-label classification.

    Called as ``loss_function(labels=..., pooled_logits=..., config=..., **kwargs)``. The problem
    type is decided as Transformers decides it (and stored in ``config.problem_type`` the same
    way): ``"single_label_classification"`` gets FairLoss on ``pooled_logits.view(-1,
    num_labels)`` (``ignore_index`` and ``num_items_in_batch`` honoured as by Transformers'
    cross-entropy); ``"regression"`` and ``"multi_label_classification"`` go to ``original``,
    the model's loss function before :func:`use_fair_loss`: FairLoss is a loss for one class
    among several.

    Args:
        options (dict): keyword arguments for :func:`fairloss.fair_loss`.
        original (callable): the loss function for the other problem types.
    """

    options: dict[str, Any]
    original: Callable[..., Tensor]

    def __call__(self, labels: Tensor, pooled_logits: Tensor, config: Any, **kwargs: Any) -> Tensor:
        num_labels = config.num_labels
        if config.problem_type is None:  # as Transformers: the first call decides, for good
            if num_labels == 1:
                config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                config.problem_type = "single_label_classification"
            else:
                config.problem_type = "multi_label_classification"
        if config.problem_type != "single_label_classification":
            return self.original(
                labels=labels, pooled_logits=pooled_logits, config=config, **kwargs
            )
        return _reduce(
            fair_loss,
            kwargs.get("num_items_in_batch"),
            input=pooled_logits.reshape(-1, num_labels),
            target=labels.reshape(-1).to(pooled_logits.device),
            ignore_index=kwargs.get("ignore_index", -100),
            **self.options,
        )


def _slice_positions(hidden_states: Tensor, logits_to_keep: Any) -> Tensor:
    """The positions Transformers' ``logits_to_keep`` keeps: the last ``k`` (0: all), or these."""
    if isinstance(logits_to_keep, int):
        return hidden_states[:, -logits_to_keep:, :] if logits_to_keep else hidden_states
    return hidden_states[:, logits_to_keep, :]


def _fused_causal_lm_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
    """The forward of a model fused by :func:`use_fair_loss`, bound to that one instance.

    In training mode with labels: the decoder, then the loss from its last hidden states and the
    head; ``logits`` is ``None``. Otherwise (no labels, or eval mode) the class's own forward
    runs unchanged, so generation and evaluation get logits (with the FairLoss hook computing
    the loss from them, the same value up to rounding).
    """
    forward = type(self).forward
    hook = self.loss_function
    arguments = inspect.signature(forward).bind(self, *args, **kwargs).arguments
    if arguments.get("labels") is None or not self.training:
        return forward(self, *args, **kwargs)
    del arguments["self"]
    for name, parameter in inspect.signature(forward).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD and name in arguments:
            arguments.update(arguments.pop(name))
    labels = arguments.pop("labels")
    logits_to_keep = arguments.pop("logits_to_keep", 0)
    return_dict = arguments.pop("return_dict", None)
    if return_dict is None:
        return_dict = getattr(self.config, "return_dict", True)

    outputs = self.base_model(**arguments)
    hidden_states = _slice_positions(outputs.last_hidden_state, logits_to_keep)
    softcap = None
    if hook.softcap_attribute is not None:
        softcap = getattr(self.config, hook.softcap_attribute, None)
    loss_arguments = {
        name: arguments[name]
        for name in ("num_items_in_batch", "ignore_index", "shift_labels")
        if name in arguments
    }
    loss = hook.fused_loss(hidden_states, self.lm_head, labels, softcap=softcap, **loss_arguments)
    cache_field = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else None
    cache_field = cache_field or "past_key_values"
    result = CausalLMOutputWithPast(
        loss=loss,
        logits=None,
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,
        **{cache_field: getattr(outputs, cache_field, None)},
    )
    return result if return_dict else result.to_tuple()


def _fused_forward_for(model_class: Any) -> Callable[..., Any]:
    """:func:`_fused_causal_lm_forward` under the signature of ``model_class.forward``.

    ``Trainer`` reads the forward's signature to decide which batch columns to keep and
    whether to pass ``num_items_in_batch``: the fused forward must show the class's own.
    """
    original = model_class.forward

    @functools.wraps(original)
    def fused_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _fused_causal_lm_forward(self, *args, **kwargs)

    fused_forward.fairloss_fused = True  # type: ignore[attr-defined]
    return fused_forward


def _is_fused(model: Any) -> bool:
    forward = vars(model).get("forward")
    return getattr(getattr(forward, "__func__", None), "fairloss_fused", False) is True


def _check_options(options: Mapping[str, Any], num_classes: int, fused: bool) -> None:
    """Check the option names and values now, with the library's own checks."""
    allowed = (*_OPTIONS, "chunk_size") if fused else _OPTIONS
    check_option_names(options, allowed, "use_fair_loss (fused)" if fused else "use_fair_loss")
    math_options = {name: options[name] for name in OPTION_NAMES if name in options}
    resolve_options(num_classes, **math_options)
    check_weight(options.get("weight"), num_classes)
    check_choice("impl", options.get("impl", "auto"), IMPLEMENTATIONS)
    check_chunk_size(options.get("chunk_size"))


def use_fair_loss(model: Any, *, fused: bool = False, **fair_loss_options: Any) -> Any:
    r"""Make a Transformers model train with FairLoss, through its own ``loss_function`` hook.

    The model's ``loss_function`` (the function every Transformers model calls with its logits
    and labels when given ``labels``) becomes FairLoss (see :func:`fairloss.fair_loss`) with
    ``fair_loss_options``, for models whose ``loss_type`` uses Transformers'

    * ``ForCausalLMLoss`` (``*ForCausalLM``, ``*ForConditionalGeneration``): the token loss of
      :class:`FairLossCausalLMHook`, with Transformers' label shift, ``shift_labels``,
      ``ignore_index`` and ``num_items_in_batch``;
    * ``ForSequenceClassificationLoss`` (``*ForSequenceClassification``, and the image, video and
      audio classification models that share it): :class:`FairLossClassificationHook`, FairLoss
      for single-label classification; regression and multi-label classification keep the
      model's own loss.

    ``num_items_in_batch`` given (``Trainer`` passes it under gradient accumulation): the loss is
    the sum over the non-ignored tokens divided by it, as Transformers computes cross-entropy,
    so accumulated micro-batches add up to the mean over the whole batch. With
    ``scaling_factor=0`` the loss and every gradient equal Transformers' own cross-entropy.

    Only this instance changes (no class, no global patch): another model of the same class
    keeps its loss. Calling it again replaces the options.

    ``fused=True`` (causal LMs of :data:`FUSED_ARCHITECTURES`): in training mode
    (``model.training``) with ``labels``, the forward runs the decoder and hands its last hidden
    states and ``model.lm_head`` to :func:`fairloss.linear_fair_loss`, which computes the
    loss in row chunks; the ``(B, T, V)`` logits are never built and ``output.logits`` is
    ``None``. Gemma 2's ``config.final_logit_softcapping`` is applied inside the chunks. Without
    labels, or in eval mode (``model.eval()``, as ``Trainer`` evaluates), the model's own forward
    runs: logits for generation and ``compute_metrics``, and the loss from them with the same
    options (the same value up to rounding). ``chunk_size`` applies to the fused path only.

    Args:
        model (PreTrainedModel): a Transformers model; changed in place.
        fused (bool, optional): compute the training loss from the hidden states and the head
            without the logits (causal LMs only). Default: ``False``.
        **fair_loss_options: keyword arguments of :func:`fairloss.fair_loss` (with ``fused``:
            of :func:`fairloss.linear_fair_loss`), such as ``scaling_factor``,
            ``smooth_max_beta``, ``penalty_scale``, ``label_smoothing``, ``weight`` or ``impl``;
            ``reduction`` and ``ignore_index`` come from Transformers.

    Returns:
        PreTrainedModel: ``model`` itself.

    Raises:
        TypeError: an unknown option name, or an option of the wrong type.
        ValueError: ``model`` of a ``loss_type`` without a FairLoss hook; ``fused=True`` for an
            architecture not in :data:`FUSED_ARCHITECTURES` (the message names the class); an
            option out of range (checked now, by :func:`fairloss.fair_loss`).

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from fairloss.integrations.transformers import use_fair_loss
        >>> _ = torch.manual_seed(0)
        >>> config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
        >>> model = use_fair_loss(LlamaForCausalLM(config), fused=True, scaling_factor=0.0)
        >>> input_ids = torch.randint(0, 64, (2, 8))
        >>> output = model(input_ids=input_ids, labels=input_ids)
        >>> output.logits is None, round(output.loss.item(), 3)
        (True, 4.138)
        >>> plain = LlamaForCausalLM(config)
        >>> _ = plain.load_state_dict(model.state_dict())
        >>> round(plain(input_ids=input_ids, labels=input_ids).loss.item(), 3)  # cross-entropy
        4.138
    """
    if not isinstance(fused, bool):
        raise TypeError(expected("fused", "a bool", f"{type(fused).__name__} {fused!r}"))
    class_name = type(model).__name__
    loss_type = getattr(model, "loss_type", None)
    mapped = LOSS_MAPPING.get(loss_type) if isinstance(loss_type, str) else None
    if mapped is not ForCausalLMLoss and mapped is not ForSequenceClassificationLoss:
        raise ValueError(
            expected(
                "model",
                "a Transformers model whose loss_type uses ForCausalLMLoss (ForCausalLM, "
                "ForConditionalGeneration) or ForSequenceClassificationLoss "
                "(ForSequenceClassification, ForImageClassification, ...)",
                f"{class_name} with loss_type={loss_type!r}",
            )
        )
    current = model.loss_function
    if isinstance(current, FairLossClassificationHook):
        current = current.original

    if mapped is ForSequenceClassificationLoss:
        if fused:
            raise ValueError(
                expected(
                    "fused", "False for a classification model (fused is for causal LMs)", True
                )
            )
        _check_options(fair_loss_options, model.config.num_labels, fused=False)
        model.loss_function = FairLossClassificationHook(dict(fair_loss_options), current)
        return model

    vocab_size = model.config.get_text_config().vocab_size
    if not fused:
        _check_options(fair_loss_options, vocab_size, fused=False)
        model.loss_function = FairLossCausalLMHook(dict(fair_loss_options))
        if _is_fused(model):
            del model.forward  # an earlier fused=True: back to the class's forward
        return model

    architecture = FUSED_ARCHITECTURES.get(class_name)
    if architecture is None:
        raise ValueError(
            expected(
                "model",
                f"one of the causal LMs fused=True knows, {tuple(FUSED_ARCHITECTURES)} "
                "(use fused=False for the others)",
                class_name,
            )
        )
    softcap_attribute = architecture.softcap_attribute
    _check_options(fair_loss_options, vocab_size, fused=True)
    logits_options = {
        name: value for name, value in fair_loss_options.items() if name != "chunk_size"
    }
    model.loss_function = FairLossCausalLMHook(
        logits_options, dict(fair_loss_options), softcap_attribute
    )
    model.forward = types.MethodType(_fused_forward_for(type(model)), model)
    return model

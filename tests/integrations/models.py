"""Tiny randomly initialised Transformers models for the integration tests (no downloads)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

#: A prime vocabulary, so no size lines up with a chunk or a block by chance.
VOCAB_SIZE = 97
NUM_LABELS = 5
SMALL: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "use_cache": False,
}

#: Causal-LM families fused=True knows: name -> (model class, config).
CAUSAL_LM_FAMILIES: dict[str, tuple[type, Any]] = {
    "llama": (LlamaForCausalLM, LlamaConfig(vocab_size=VOCAB_SIZE, **SMALL)),
    "mistral": (MistralForCausalLM, MistralConfig(vocab_size=VOCAB_SIZE, **SMALL)),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(vocab_size=VOCAB_SIZE, **SMALL)),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config(vocab_size=VOCAB_SIZE, head_dim=8, **SMALL)),
    # A low cap, so that capping changes the logits a lot.
    "gemma2": (
        Gemma2ForCausalLM,
        Gemma2Config(vocab_size=VOCAB_SIZE, head_dim=8, final_logit_softcapping=2.0, **SMALL),
    ),
}


def causal_lm(family: str, seed: int = 0) -> Any:
    model_class, config = CAUSAL_LM_FAMILIES[family]
    torch.manual_seed(seed)
    model = model_class(config)
    # Default inits give near-uniform logits; larger head weights make the penalty matter.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)
    return model.train()


def sequence_classifier(
    num_labels: int = NUM_LABELS, seed: int = 0, score_scale: float = 20.0, **config: Any
) -> Any:
    torch.manual_seed(seed)
    settings = {**SMALL, "pad_token_id": 0, "num_labels": num_labels, **config}
    model = LlamaForSequenceClassification(LlamaConfig(vocab_size=VOCAB_SIZE, **settings))
    with torch.no_grad():
        model.score.weight.mul_(score_scale)
    return model.train()


def token_batch(batch: int = 3, length: int = 11, seed: int = 1) -> torch.Tensor:
    """Token ids in ``[1, VOCAB_SIZE)`` (0 is the classifier's padding token)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB_SIZE, (batch, length), generator=generator)

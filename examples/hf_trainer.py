"""Train a tiny causal language model with Hugging Face ``Trainer`` and FairLoss; keep the best PLL.

No download: a randomly initialised two-layer Llama learns a toy language (each token is the
previous one plus a step that depends on the sequence's first token, modulo the vocabulary, with
some noise). ``use_fair_loss(model, fused=True)`` makes it train with FairLoss from the hidden
states and the head, without the logits; ``fair_loss_metrics`` scores each evaluation, and
``metric_for_best_model="pll"`` keeps the checkpoint with the lowest Penalized Log Loss.
Runs in seconds on a CPU: ``python examples/hf_trainer.py``. Needs
``pip install "pytorch-fairloss[transformers]"``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from fairloss.integrations.transformers import fair_loss_metrics, use_fair_loss

VOCAB_SIZE = 32
LENGTH = 12
NOISE = 0.1
TRAIN_SEQUENCES = 48  # few: the model ends up memorising them, and the best PLL comes earlier


def toy_language(num_sequences: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Sequences ``x[t + 1] = x[t] + step (mod V)``, ``step`` set by ``x[0]``; 10 % noise."""
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(0, VOCAB_SIZE, (num_sequences, 1), generator=generator)
    steps = 1 + first % 3
    tokens = (first + steps * torch.arange(LENGTH)) % VOCAB_SIZE
    noisy = torch.rand(tokens.shape, generator=generator) < NOISE
    noisy[:, 0] = False
    tokens[noisy] = torch.randint(0, VOCAB_SIZE, (int(noisy.sum()),), generator=generator)
    return [{"input_ids": row, "labels": row.clone()} for row in tokens]


def main() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=LENGTH,
        use_cache=False,
    )
    model = use_fair_loss(LlamaForCausalLM(config), fused=True)

    with tempfile.TemporaryDirectory() as output_dir:
        arguments = TrainingArguments(
            output_dir=output_dir,
            max_steps=60,
            per_device_train_batch_size=16,
            per_device_eval_batch_size=64,
            learning_rate=1e-2,
            eval_strategy="steps",
            eval_steps=10,
            save_strategy="steps",
            save_steps=10,
            save_only_model=True,
            metric_for_best_model="pll",
            greater_is_better=False,
            load_best_model_at_end=True,
            logging_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
        )
        trainer = Trainer(
            model=model,
            args=arguments,
            train_dataset=toy_language(TRAIN_SEQUENCES, seed=1),
            eval_dataset=toy_language(64, seed=2),
            compute_metrics=fair_loss_metrics(shift_labels=True),
        )
        trainer.remove_callback(PrinterCallback)  # the lines below say it more briefly
        trainer.train()
        for entry in trainer.state.log_history:
            if "eval_pll" in entry:
                print(
                    f"step {entry['step']:3d}: eval_pll {entry['eval_pll']:.4f}  "
                    f"eval_accuracy {entry['eval_accuracy']:.4f}  "
                    f"eval_loss {entry['eval_loss']:.4f}"
                )
        best = Path(str(trainer.state.best_model_checkpoint)).name
        final = trainer.evaluate()
        print(f"best checkpoint: {best} (eval_pll {trainer.state.best_metric:.4f})")
        print(f"loaded at the end: eval_pll {final['eval_pll']:.4f}")


if __name__ == "__main__":
    main()

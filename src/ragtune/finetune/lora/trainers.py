"""TRL trainers configured from a :class:`TuneConfig`: SFTTrainer on pre-tokenised rows whose
labels cover only the assistant turns (``trainset.sft_features``), or DPOTrainer on conversational
prompt / chosen / rejected rows (TRL renders them with the model's chat template; with a PEFT
model the reference model is the base with the adapter switched off).

With ``packing`` (SFT only), TRL packs the rows best-fit decreasing into ``max_length`` sequences
and keeps our ``labels`` column through the packing; its collator then feeds them padding-free (one
flat sequence per batch, position ids restarting at each row), so no row attends to another with
sdpa, eager or flash attention (``trainset`` docstring; the test checks the loss). Eval rows are
not packed, so an eval loss is computed on the same batches with packing on or off.

Used by ``train.train_worker``; TRL and datasets are imported when a trainer is built.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragtune.errors import DatasetError
from ragtune.extras import needs
from ragtune.finetune.data.examples import Example
from ragtune.finetune.lora.config import TuneConfig
from ragtune.finetune.lora.trainset import dpo_record, sft_dataset


def _common(config: TuneConfig, output_dir: Path, *, has_eval: bool, bf16: bool, use_cpu: bool) -> dict[str, Any]:
    """TrainingArguments shared by both methods."""
    every = config.eval_steps > 0 and has_eval
    return {
        "output_dir": str(output_dir),
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps if config.max_steps > 0 else -1,
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": config.warmup_ratio,  # a float in [0, 1) is a share of the total steps
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "seed": config.seed,
        "data_seed": config.seed,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "logging_steps": config.logging_steps,
        "eval_strategy": "steps" if every else "no",
        "eval_steps": config.eval_steps if every else None,
        "bf16": bf16,
        "fp16": False,
        "use_cpu": use_cpu,
        # torchrun sets WORLD_SIZE; naming a backend outside it would make accelerate look for a process group.
        "ddp_backend": "gloo" if use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        "ddp_find_unused_parameters": False,
        "include_num_input_tokens_seen": "non_padding",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "max_length": config.max_length,
    }


def build_trainer(config: TuneConfig, *, model: Any, tokenizer: Any, train_rows: Sequence[Example],
                  eval_rows: Sequence[Example], output_dir: Path, callbacks: list[Any], bf16: bool,
                  use_cpu: bool) -> tuple[Any, dict[str, int]]:
    """The trainer and counts of the data it got (rows, truncated, dropped, tokens)."""
    with needs("train", "training"):
        from datasets import Dataset, disable_progress_bars
        from transformers.trainer_callback import PrinterCallback
        from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer
    disable_progress_bars()  # dataset preparation bars would interleave with the training bar
    common = _common(config, output_dir, has_eval=bool(eval_rows), bf16=bf16, use_cpu=use_cpu)
    # Explicit either way: TRL turns checkpointing on by default (transformers 5 renamed it activation_checkpointing).
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    common["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = (
        config.gradient_checkpointing)
    stats: dict[str, int]
    trainer: Any
    args: Any
    if config.method == "sft":
        train, stats = sft_dataset(tokenizer, train_rows, config.max_length)
        if not train:
            raise DatasetError(f"no training row keeps an assistant token within max_length={config.max_length}")
        evaluation = sft_dataset(tokenizer, eval_rows, config.max_length)[0] if eval_rows else []
        packing: dict[str, Any] = {"packing": False}
        if config.packing:
            packing = {"packing": True, "packing_strategy": "bfd", "padding_free": True, "eval_packing": False}
            # A padding-free batch holds no padding, and "non_padding" would count tokens unequal to the pad
            # token, which is often the end-of-turn token (SmolLM2's <|im_end|>): every token is the count.
            common["include_num_input_tokens_seen"] = "all"
        args = SFTConfig(**common, dataset_num_proc=None, **packing)
        trainer = SFTTrainer(
            model=model, args=args, processing_class=tokenizer, train_dataset=Dataset.from_list(train),
            eval_dataset=Dataset.from_list(evaluation) if evaluation else None, callbacks=callbacks,
        )
        if config.packing:
            stats["packed_sequences"] = len(trainer.train_dataset)
    else:
        train = [dpo_record(e) for e in train_rows]
        evaluation = [dpo_record(e) for e in eval_rows]
        stats = {"rows": len(train), "pairs": len(train)}
        args = DPOConfig(**common, beta=config.dpo.beta)
        trainer = DPOTrainer(
            model=model, args=args, processing_class=tokenizer, train_dataset=Dataset.from_list(train),
            eval_dataset=Dataset.from_list(evaluation) if evaluation else None, callbacks=callbacks,
        )
    trainer.remove_callback(PrinterCallback)  # our monitor shows progress; no dicts printed to stdout
    return trainer, stats

"""LoRA training with PEFT through TRL (SFTTrainer, or DPOTrainer for preference pairs).

``start_run`` makes a run folder (see ``runs``), snapshots the rows and the resolved config into
it and trains; ``resume_run`` continues an unfinished run from its newest complete checkpoint,
with the step counter, optimiser, scheduler and RNG states where they were. With ``nproc > 1``
the training runs in ``nproc`` data-parallel processes started by torchrun on the gloo backend
(each with ``cores // nproc`` threads); this process keeps the run's lock and writes its status.

Choices, stated: fp32 on CPU (``bf16=False``); bf16 only on a CUDA GPU that supports it. QLoRA
(``qlora = true``) loads the base in 4-bit NF4 through bitsandbytes, and only on a CUDA GPU; on a
CPU it is skipped and the run's notes say so. Seeds are fixed (``set_seed`` before the LoRA
weights are drawn, ``seed``/``data_seed`` for the Trainer). The base model's hash covers its
config and weight files, so a registry can tell two bases apart whatever their folder names.

``python -m ragtune.finetune.lora.train RUN_DIR [--resume] [--progress FILE]`` is the worker entry
point that torchrun starts; it trains the run described in ``RUN_DIR`` and writes ``metrics.json``.

Progress (``protocols.Progress``): "training" events (``lora.progress``: steps done of
``max_steps``, loss and tokens/s). A worker process appends them to ``FILE`` as JSON lines
(``ragtune.progress.JsonLinesWriter``); this process reads them back while it waits and passes
them to its own ``progress``, so a data-parallel run reports like an in-process one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, ModelError, RagtuneError, TrainingError
from ragtune.extras import needs
from ragtune.finetune.data import lengths
from ragtune.finetune.lora import runs
from ragtune.finetune.lora.config import TuneConfig, from_dict, to_dict, to_toml
from ragtune.finetune.lora.runs import RunRecord
from ragtune.finetune.lora.trainers import build_trainer
from ragtune.finetune.lora.trainset import (
    ChatTemplate,
    TrainSet,
    chat_template,
    check_chat_template,
    read_rows,
    write_rows,
)
from ragtune.generate.lineage import model_hash as model_hash  # the base's hash, also imported from here
from ragtune.generate.prompt import CHAT_FORMAT, read_prompt_format, write_prompt_format
from ragtune.models import PromptFormat
from ragtune.observe.tracing import Step, TracedSpan, Tracing, hex_trace_id, run_span, stash
from ragtune.progress import JsonLinesReader, JsonLinesWriter
from ragtune.protocols import Progress

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.jsonl"  # in the run folder while torchrun workers train; removed after


@dataclass(frozen=True)
class ResolvedBase:
    name: str
    path: Path
    hash: str


def resolve_base(spec: str, cache_dir: Path) -> ResolvedBase:
    """``smollm2`` (the packaged SmolLM2-135M-Instruct, converted once by ``generate.local``) or a
    Hugging Face model folder, resolved as dataset validation resolves it, plus its hash."""
    base = lengths.resolve_base(spec, cache_dir)
    return ResolvedBase(base.name, base.path.resolve(), model_hash(base.path))


# -- the orchestrating process ---------------------------------------------------------------------
def start_run(*, base: str, data: TrainSet, config: TuneConfig, data_dir: Path, cache_dir: Path,
              name: str | None = None, output: Path | None = None, nproc: int = 1,
              progress: Progress | None = None, callbacks: Sequence[Any] = (),
              prompt_format: PromptFormat | None = None, tracing: Tracing | None = None) -> RunRecord:
    """Train a new run; returns its completed record (raises ``TrainingError`` when it fails).

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (the hyperparameter search's
    pruning hook); they live in this process, so they need ``nproc == 1``. ``prompt_format`` is
    the format the rows were rendered in (``rag_format``); the adapter records it, or ``chat``
    (``generate.prompt``), so serving knows which prompt it was trained on. With ``tracing`` the
    run is a ``train`` trace (``_traced``)."""
    if nproc < 1:
        raise ConfigError(f"invalid --nproc {nproc}: expected at least 1")
    if callbacks and nproc > 1:
        raise ConfigError(f"Trainer callbacks run in this process only; they cannot be used with --nproc {nproc}")
    data.check_method(config.method)
    if not data.train:
        raise ConfigError(f"dataset {data.name!r} has no training rows (all {len(data.eval)} rows are eval rows)")
    model = resolve_base(base, cache_dir)
    # The template is resolved and tried here, before a run folder exists: a bad file or a template
    # that is not prefix-preserving is a refusal, not a failed run.
    template, template_notes = _chat_template(config.chat_template, model.path, sft=config.method == "sft")
    name = runs.check_name(name or data.run_name)
    run_dir = runs.claim_output_dir(output) if output is not None else runs.create_run_dir(data_dir / "runs", name)
    notes = ((_qlora_note(),) if config.qlora and not _cuda() else ()) + template_notes
    with runs.run_lock(run_dir):
        (run_dir / "data").mkdir()
        write_rows(run_dir / "data" / "train.jsonl", data.train)
        write_rows(run_dir / "data" / "eval.jsonl", data.eval)
        (run_dir / "config.toml").write_text(to_toml(config), encoding="utf-8")
        (run_dir / runs.CHAT_TEMPLATE_FILE).write_text(template.text, encoding="utf-8")
        write_prompt_format(run_dir, prompt_format or chat_format(data.train))
        record = RunRecord(
            run_id=run_dir.name, name=name, path=str(run_dir.resolve()), method=config.method, base=model.name,
            base_path=str(model.path), base_hash=model.hash, dataset=data.name, dataset_version=data.version,
            dataset_hash=data.content_hash, train_rows=len(data.train), eval_rows=len(data.eval),
            config=to_dict(config), started_at=runs.now(), world_size=nproc, forced_reasons=data.forced_reasons,
            notes=notes, chat_template=template.record(), mix=tuple(part.to_dict() for part in data.mix),
        )
        return _execute(record, nproc=nproc, resume=False, progress=progress, callbacks=callbacks, tracing=tracing)


def resume_run(run_dir: Path, *, nproc: int | None = None, progress: Progress | None = None,
               expect: dict[str, Any] | None = None, tracing: Tracing | None = None) -> RunRecord:
    """Continue an unfinished run from its newest complete checkpoint. ``expect`` (``base_hash``,
    ``dataset_hash``, ``config``) must match what the run recorded."""
    status = runs.read_status(run_dir)  # marks a killed run failed
    record = runs.read_record(run_dir)
    if record is None:
        raise ConfigError(f"{run_dir} is not a training run (run.json missing)")
    if status["status"] == "completed":
        raise ConfigError(f"run {run_dir} already completed; start a new run instead of --resume")
    for key, value in (expect or {}).items():
        recorded = getattr(record, key)
        if key == "config":  # keys added since the run was recorded (packing, chat_template) at their defaults
            recorded = to_dict(from_dict(recorded))
        if value is not None and value != recorded:
            changed = key
            if key == "config":
                changed = "config (" + ", ".join(sorted(k for k in {*value, *recorded}
                                                        if value.get(k) != recorded.get(k))) + ")"
            raise ConfigError(f"cannot resume {run_dir}: the {changed} differs from the run's; start a new run")
    with runs.run_lock(run_dir):
        record = record.replace(status="running", error=None, finished_at=None,
                                world_size=nproc or record.world_size)
        return _execute(record, nproc=record.world_size, resume=True, progress=progress, tracing=tracing)


def _execute(record: RunRecord, *, nproc: int, resume: bool, progress: Progress | None,
             callbacks: Sequence[Any] = (), tracing: Tracing | None = None) -> RunRecord:
    run_dir = Path(record.path)
    with _traced(tracing, record, resume) as span:
        trace_id = hex_trace_id(span) if span is not None else None
        if trace_id is not None:  # each session of a run (a resume is another) is a trace of its own
            record = record.replace(trace_ids=(*record.trace_ids, trace_id))
        runs.set_status(run_dir, "running", resumed=resume)
        runs.write_record(record)
        try:
            if nproc == 1:
                metrics = train_worker(run_dir, resume=resume, progress=progress, callbacks=callbacks)
            else:
                metrics = _torchrun(run_dir, nproc, resume=resume, progress=progress)
        except BaseException as exc:
            reason = _reason(exc)
            finished = runs.now()
            runs.set_status(run_dir, "failed", error=reason)
            runs.write_record(record.replace(status="failed", error=reason, finished_at=finished))
            if isinstance(exc, RagtuneError | KeyboardInterrupt):
                raise
            raise TrainingError(run_dir, reason) from exc
        if span is not None:
            _record_timeline(span, metrics)
    record = record.replace(status="completed", finished_at=runs.now(), metrics=metrics,
                            adapter=str(run_dir / "adapter"))
    runs.write_record(record)
    runs.set_status(run_dir, "completed")
    return record


def _traced(tracing: Tracing | None, record: RunRecord, resume: bool) -> AbstractContextManager[TracedSpan | None]:
    """The run's ``train`` span (None without ``tracing``): a root span the run's maker (the
    operator running it) sees, naming the run, its base, dataset and configuration, so the trace
    and the MLflow run (tagged ``ragtune.trace_ids`` by ``tracking.log_run``) find each other."""
    attributes = {
        "ragtune.model": record.base, "gen_ai.request.model": record.base, "ragtune.run_id": record.run_id,
        "ragtune.run_dir": record.path, "ragtune.train.method": record.method, "ragtune.train.resumed": resume,
        "ragtune.dataset": record.dataset, "ragtune.dataset_hash": record.dataset_hash,
        "ragtune.base_hash": record.base_hash, "ragtune.params": record.params(),
        "ragtune.train.rows": record.train_rows, "ragtune.train.eval_rows": record.eval_rows,
        "ragtune.train.world_size": record.world_size,
    }
    title = f"{record.method} run {record.run_id} on {record.dataset}" + (" (resumed)" if resume else "")
    return run_span(tracing, "train", attributes, title)


def _record_timeline(span: TracedSpan, metrics: dict[str, Any]) -> None:
    """The run's numbers on its span, and its epochs and evaluations (``progress.TrainingMonitor``'s
    timeline) as child spans: an evaluation inside an epoch is that epoch's child."""
    timeline = metrics.get("timeline") or {}
    steps: list[Step] = []
    for epoch in timeline.get("epochs", []):
        steps.append(Step("epoch", None, int(epoch["start_ns"]), int(epoch["end_ns"]), {
            "ragtune.train.epoch": epoch["epoch"], "ragtune.train.step": epoch["step"],
            "ragtune.train.epoch_progress": epoch["epoch_progress"], "ragtune.train.loss": epoch["loss"],
            "ragtune.train.learning_rate": epoch["learning_rate"]}))
    epochs = list(steps)
    for evaluation in timeline.get("evaluations", []):
        start, end = int(evaluation["start_ns"]), int(evaluation["end_ns"])
        parent = next((i for i, e in enumerate(epochs) if e.start_ns <= start and end <= e.end_ns), None)
        steps.append(Step("evaluation", parent, start, end, {
            "ragtune.train.step": evaluation["step"], "ragtune.train.epoch_progress": evaluation["epoch_progress"],
            **{f"ragtune.eval.{k.removeprefix('eval_')}": v for k, v in evaluation["metrics"].items()}}))
    stash(span, {"ragtune.steps": steps, **{f"ragtune.train.{k}": metrics.get(k) for k in (
        "steps", "session_steps", "tokens", "seconds", "tokens_per_second", "train_loss", "eval_loss",
        "first_loss", "last_loss", "peak_rss_mb", "trainable_parameters")}})


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = str(exc).lower()
    # torch on CPU: "DefaultCPUAllocator: can't allocate memory"; on CUDA: "CUDA out of memory".
    if isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text:
        return f"out of memory: {exc}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def _torchrun(run_dir: Path, nproc: int, *, resume: bool, progress: Progress | None) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "ragtune.finetune.lora.train", str(run_dir)]
    cmd += ["--resume"] if resume else []
    events = run_dir / PROGRESS_FILE
    events.unlink(missing_ok=True)
    cmd += ["--progress", str(events)] if progress is not None else []
    (run_dir / "error.txt").unlink(missing_ok=True)
    reader = JsonLinesReader(events, progress)
    try:
        with subprocess.Popen(cmd, env=env) as proc:
            try:
                while proc.poll() is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=0.5)
                    reader.relay()
            except BaseException:  # Ctrl-C or a failing receiver: the workers go too
                proc.kill()
                raise
        code = proc.returncode
        reader.relay()
    finally:
        events.unlink(missing_ok=True)
    if code != 0:
        error = run_dir / "error.txt"
        detail = error.read_text(encoding="utf-8").strip().splitlines()[-1] if error.is_file() else ""
        raise RuntimeError(f"torchrun with {nproc} processes exited with code {code}"
                           + (f": {detail}" if detail else ""))
    return dict(json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")))


def chat_format(rows: Sequence[Any]) -> PromptFormat:
    """``chat``: rows trained as they were written, with the system message they all share (None
    when they differ or have none)."""
    systems = {next((m["content"] for m in r.messages if m["role"] == "system"), None) for r in rows}
    return PromptFormat(CHAT_FORMAT, systems.pop() if len(systems) == 1 else None)


def _chat_template(spec: str, base_path: Path, *, sft: bool) -> tuple[ChatTemplate, tuple[str, ...]]:
    """The template a run trains with and the notes it brings (``trainset.check_chat_template``;
    DPO rows are rendered by TRL, which does not locate turns by prefixes)."""
    with needs("train", "training"):
        from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    template = chat_template(spec, tokenizer)
    tokenizer.chat_template = template.text
    return template, check_chat_template(tokenizer, prefix_preserving=sft)


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _qlora_note() -> str:
    return "QLoRA skipped: 4-bit bitsandbytes needs a CUDA GPU and none is present; trained plain LoRA in fp32"


# -- the training process (this process, or each torchrun worker) -----------------------------------
def train_worker(run_dir: Path, *, resume: bool = False, progress: Progress | None = None,
                 callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train the run described in ``run_dir``; the main process saves the adapter and metrics."""
    with needs("train", "training"):
        import torch
        import transformers
        from peft import LoraConfig, get_peft_model
    record = runs.read_record(run_dir)
    if record is None:
        raise ConfigError(f"{run_dir} is not a training run (run.json missing)")
    config = from_dict(record.config)
    checkpoint = runs.latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        log.warning("no complete checkpoint in %s: training from the start", run_dir)

    transformers.set_seed(config.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(record.base_path)
    # The run's own copy of its template (runs from before templates were chosen have none: the base's own).
    # It goes into the adapter's tokenizer files with the adapter, for serving to render prompts alike.
    template_file = run_dir / runs.CHAT_TEMPLATE_FILE
    if template_file.is_file():
        tokenizer.chat_template = template_file.read_text(encoding="utf-8")
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"{record.base_path} has no chat template; use an instruction-tuned model folder")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cuda = _cuda()
    load: dict[str, Any] = {"dtype": torch.float32}
    if config.qlora and cuda:
        load = _qlora_load_options(torch)
    model: Any = transformers.AutoModelForCausalLM.from_pretrained(record.base_path, **load)
    if "quantization_config" in load:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    parameters = sum(p.numel() for p in model.parameters())
    modules = config.lora.target_modules
    lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=modules if isinstance(modules, str) else list(modules), task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"invalid lora.target_modules={modules!r} for {record.base}: {exc}") from None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    train_rows, eval_rows = read_rows(run_dir / "data" / "train.jsonl"), read_rows(run_dir / "data" / "eval.jsonl")
    # progress.py subclasses transformers' TrainerCallback at import: loaded only for a training
    from ragtune.finetune.lora.progress import TrainingMonitor

    monitor = TrainingMonitor(progress)
    trainer, data_stats = build_trainer(
        config, model=model, tokenizer=tokenizer, train_rows=train_rows, eval_rows=eval_rows,
        output_dir=run_dir / "checkpoints", callbacks=[monitor, *callbacks],
        bf16=cuda and torch.cuda.is_bf16_supported(), use_cpu=not cuda,
    )
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    metrics: dict[str, Any] = {
        **monitor.metrics(),
        "train_loss": float(result.training_loss),
        "losses": [[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h],
        "parameters": parameters, "trainable_parameters": trainable, "world_size": trainer.args.world_size,
        **{f"data_{k}": v for k, v in data_stats.items()},
    }
    if metrics["losses"]:
        metrics["first_loss"], metrics["last_loss"] = metrics["losses"][0][1], metrics["losses"][-1][1]
    if eval_rows and config.eval_steps == 0:
        metrics.update({k: float(v) for k, v in trainer.evaluate().items() if k == "eval_loss"})
    elif monitor.eval_losses:
        metrics["eval_loss"] = monitor.eval_losses[-1][1]
    metrics["timeline"] = {"epochs": monitor.epochs, "evaluations": monitor.evaluations}  # with the last evaluation
    if trainer.is_world_process_zero():
        trainer.save_model(str(run_dir / "adapter"))
        # the format the rows were written in travels with the adapter (registry copies, exports)
        write_prompt_format(run_dir / "adapter", read_prompt_format(run_dir) or chat_format(train_rows))
        runs.write_json(run_dir / "metrics.json", metrics)
    return metrics


def _qlora_load_options(torch: Any) -> dict[str, Any]:
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise ModelError(f"QLoRA needs bitsandbytes: pip install bitsandbytes ({exc})") from exc
    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
    ), "dtype": torch.float32}


def _worker_main(argv: list[str]) -> int:
    run_dir = Path(argv[0])
    rank = int(os.environ.get("RANK", "0"))
    try:
        events = argv[argv.index("--progress") + 1] if "--progress" in argv else None
        train_worker(run_dir, resume="--resume" in argv, progress=JsonLinesWriter(events) if events else None)
    except BaseException as exc:
        with open(run_dir / "error.txt", "a", encoding="utf-8") as fh:
            fh.write(f"rank {rank}: {traceback.format_exc()}\nrank {rank}: {_reason(exc)}\n")
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover - started by torchrun
    sys.exit(_worker_main(sys.argv[1:]))

"""``ragtune tune train|runs``: LoRA fine-tuning runs (``tune search`` reads its data the same way:
``training_data``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ragtune.cli.common import (
    AsJson,
    DataDir,
    ProgressBars,
    console,
    err_console,
    load_settings,
    num,
    open_engine,
    run_command,
)
from ragtune.errors import ConfigError, DatasetError
from ragtune.models import Principal

if TYPE_CHECKING:
    from ragtune.engine import Ragtune
    from ragtune.finetune.lora.config import TuneConfig
    from ragtune.finetune.lora.trainset import TrainSet
    from ragtune.models import PromptFormat
    from ragtune.protocols import Progress
    from ragtune.settings import Settings

app = typer.Typer()  # tune train|runs


@app.command("train")
def train(
    data: Annotated[list[str], typer.Option("--data", help="A stored dataset name (`ragtune data import`), or a "
                                            "chat JSONL file (also Alpaca / ShareGPT); NAME:WEIGHT takes that share "
                                            "of its training rows (0.3, 2); repeat to mix datasets.")],
    base: Annotated[str, typer.Option("--base", help="Base model: smollm2 or a Hugging Face folder.")] = "smollm2",
    config: Annotated[Path | None, typer.Option("--config", help="Training config (tune.toml).")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Run folder (default <data-dir>/runs/"
                                                "<name>-<timestamp>).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Run name (default: the dataset's).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the newest unfinished run of this name "
                                         "(or --output) from its last checkpoint.")] = False,
    nproc: Annotated[int | None, typer.Option("--nproc", help="Data-parallel processes (torchrun, gloo).")] = None,
    method: Annotated[str | None, typer.Option("--method", help="sft | dpo (default: the config's, sft).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Train on a dataset that failed validation; the "
                                        "reasons are recorded with the run.")] = False,
    version: Annotated[int | None, typer.Option("--data-version", help="Dataset version (default: latest).")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Override a config key: KEY=VALUE, a table's "
                                                   "keys dotted (lora.r=16); repeatable.")] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate", help="Overrides learning_rate.")] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="Overrides epochs.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Overrides max_steps.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Overrides batch_size.")] = None,
    lora_r: Annotated[int | None, typer.Option("--lora-r", help="Overrides lora.r.")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", help="Overrides max_length.")] = None,
    packing: Annotated[bool | None, typer.Option("--packing/--no-packing", help="Overrides packing (SFT: rows "
                                                 "packed into max_length sequences).")] = None,
    chat_template: Annotated[str | None, typer.Option("--chat-template", help="Overrides chat_template: base, "
                                                      "chatml, llama3, zephyr or a Jinja file.")] = None,
    rag_format: Annotated[bool, typer.Option(
        "--rag-format", help="Train for answering over retrieval: each row rendered as `ask` serves it (ragtune's "
                             "system message, numbered sources from --collection: the gold one among distractors, "
                             "RAFT-style), its answer cited. Serving then uses that format.")] = False,
    collection: Annotated[str | None, typer.Option(
        "--collection", "-c", help="With --rag-format: the collection the questions are searched in.")] = None,
    rag_top_k: Annotated[int | None, typer.Option(
        "--rag-top-k", min=1, max=50, help="Sources per training prompt (default: [generation] answer_top_k, "
                                           "as `ask` serves).")] = None,
    gold_share: Annotated[float, typer.Option(
        "--gold-share", min=0.0, max=1.0, help="With --rag-format: the share of rows whose prompt holds the gold "
                                               "source; the others learn to abstain.")] = 0.8,
    gold_position: Annotated[str, typer.Option(
        "--gold-position", help="With --rag-format: where the gold source goes among the distractors: rank (its "
                                "retrieved rank, as `ask` numbers sources) or random (RAFT's).")] = "rank",
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Train a LoRA adapter on a dataset (or a weighted mix); prints the run's record.

    The configuration is --config's (or the defaults), then each --set, then the plain options."""
    def body() -> None:
        from ragtune.finetune.lora import runs
        from ragtune.finetune.lora.config import load_config, to_dict
        from ragtune.finetune.lora.train import resolve_base, resume_run, start_run

        settings = load_settings(data_dir)
        options: dict[str, Any] = {
            "method": method, "learning_rate": learning_rate, "epochs": epochs, "max_steps": max_steps,
            "batch_size": batch_size, "max_length": max_length, "packing": packing, "chat_template": chat_template,
            "lora": {"r": lora_r} if lora_r is not None else None,
        }
        if collection is not None and not rag_format:
            raise ConfigError(f"--collection {collection} is read with --rag-format only: add --rag-format to train "
                              "on its retrieved sources")
        if rag_format and collection is None:
            raise ConfigError("--rag-format needs --collection NAME: the collection the training questions are "
                              "answered from")
        tune = load_config(config, sets=sets or (), **options)
        dataset = training_data(settings, data, tune, force=force, version=version)
        run_name = runs.check_name(name or dataset.run_name)
        with open_engine(settings) as rt:  # the run is a trace in the project's spans table
            if resume:
                run_dir = output.expanduser() if output is not None else runs.resumable_run(
                    settings.data_dir / "runs", run_name)
                expect: dict[str, Any] = {"base_hash": resolve_base(base, settings.resolved_cache_dir).hash}
                if not rag_format:  # rendered rows hash differently; the run keeps the ones it trains on
                    expect["dataset_hash"] = dataset.content_hash
                if config is not None or sets or any(v is not None for v in options.values()):
                    expect["config"] = to_dict(tune)
                with ProgressBars() as bars:
                    record = resume_run(run_dir, nproc=nproc, progress=bars, expect=expect, tracing=rt.tracing)
            else:
                with ProgressBars() as bars:
                    trained = None
                    if collection is not None:
                        dataset, trained = _for_sources(rt, dataset, base, collection, rag_top_k, gold_share,
                                                        gold_position, tune.seed, bars)
                    record = start_run(base=base, data=dataset, config=tune, data_dir=settings.data_dir,
                                       cache_dir=settings.resolved_cache_dir, name=run_name, output=output,
                                       nproc=nproc or 1, progress=bars, prompt_format=trained, tracing=rt.tracing)
            rt.tracing.flush(120_000)  # the embedded server may have to start for it
        _print_record(record, as_json)

    run_command(body)


def _for_sources(rt: Ragtune, dataset: TrainSet, base: str, collection: str, top_k: int | None,
                 gold_share: float, gold_position: str, seed: int,
                 progress: Progress) -> tuple[TrainSet, PromptFormat]:
    """``--rag-format``: the rows rendered as ``ask`` prompts over ``collection`` (as the operator, who
    reads every document; ``finetune.lora.rag_format``)."""
    from ragtune.finetune.lora.rag_format import RagFormat, describe, for_sources
    from ragtune.finetune.lora.train import resolve_base

    g = rt.settings.generation
    fmt = RagFormat(collection, top_k=top_k or g.answer_top_k, gold_share=gold_share, context_tokens=g.context_tokens,
                    max_tokens=g.max_new_tokens, seed=seed, gold_position=gold_position)
    rt.collection(collection)  # NotFoundError before any model loads

    def search(question: str, k: int) -> list[Any]:
        return rt.search(question, collection=collection, top_k=k, principal=Principal.system()).hits

    rendered, trained = for_sources(dataset, fmt, search, resolve_base(base, rt.settings.resolved_cache_dir).path,
                                    progress=progress)
    err_console.print(f"--rag-format over {collection}: " + describe(trained.details, fmt.top_k), highlight=False)
    return rendered, trained


def training_data(settings: Settings, data: str | list[str], tune: TuneConfig, *, force: bool,
                  version: int | None) -> TrainSet:
    """``--data`` (repeatable): files of examples or stored datasets (their latest version unless
    ``version``), each ``NAME[:WEIGHT]``; more than one, or a weight, make a mix (``trainset.mix``,
    sampled with the config's seed)."""
    from ragtune.finetune.lora.trainset import check_weight, mix

    specs = [data] if isinstance(data, str) else list(data)
    if version is not None and len(specs) > 1:
        raise ConfigError("--data-version applies to a single --data; a mix takes each dataset's latest version")
    parsed = [_data_spec(spec) for spec in specs]
    for source, weight in parsed:
        if weight is not None:
            check_weight(source, weight)  # refused before any dataset is read
    datasets = _read_datasets(settings, [source for source, _ in parsed], tune, force=force, version=version)
    if len(parsed) == 1 and parsed[0][1] is None:
        return datasets[0]
    return mix([(d, 1.0 if w is None else w) for d, (_, w) in zip(datasets, parsed, strict=True)], seed=tune.seed)


def _data_spec(spec: str) -> tuple[str, float | None]:
    """``NAME[:WEIGHT]`` or ``FILE[:WEIGHT]``: dataset names hold no ':', and an existing file is taken whole."""
    if Path(spec).expanduser().is_file():
        return spec, None
    source, sep, weight = spec.rpartition(":")
    if not sep:
        return spec, None
    try:
        value = float(weight)
    except ValueError:
        raise ConfigError(f"invalid --data {spec!r}: expected NAME[:WEIGHT] or FILE[:WEIGHT], the weight a number "
                          f"(0.3: 30% of the dataset's training rows), not {weight!r}") from None
    if not source:
        raise ConfigError(f"invalid --data {spec!r}: no dataset before the weight")
    return source, value


def _read_datasets(settings: Settings, sources: list[str], tune: TuneConfig, *, force: bool,
                   version: int | None) -> list[TrainSet]:
    """Each source a file of examples or a stored dataset (the database opened once, if at all)."""
    from ragtune.finetune.lora.trainset import from_file, from_store

    out: dict[int, TrainSet] = {}
    stored: list[tuple[int, str]] = []
    for i, source in enumerate(sources):
        path = Path(source).expanduser()
        if path.is_file():
            if version is not None:
                raise typer.BadParameter("--data-version applies to stored datasets, not to a file")
            out[i] = from_file(path, eval_fraction=tune.eval_fraction, force=force)
        elif "/" in source or path.suffix in (".jsonl", ".json"):
            raise DatasetError(f"no dataset file at {path}")
        else:
            stored.append((i, source))
    if stored:
        from ragtune.finetune.data.store import DatasetStore

        with open_engine(settings) as rt:
            store = DatasetStore(rt.db, cache_dir=settings.resolved_cache_dir, audit=settings.governance.audit)
            for i, source in stored:
                # Training, search and evaluation are the local operator's commands: they read every row.
                out[i] = from_store(store, source, principal=Principal.system(), version=version, force=force)
    return [out[i] for i in range(len(sources))]


def _print_record(record: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record.to_dict(), indent=2, default=str))
        return
    m = record.metrics
    table = Table(title=f"run {record.run_id}: {record.status}", show_header=False)
    rows = [
        ("folder", record.path), ("method", record.method), ("base", f"{record.base} ({record.base_hash[:12]})"),
        ("dataset", f"{record.dataset}" + (f" v{record.dataset_version}" if record.dataset_version else "")
         + f" ({record.dataset_hash[:12]}): {record.train_rows} train, {record.eval_rows} eval rows"),
        ("steps", f"{m.get('steps')} (resumed from {m['resumed_from_step']})" if m.get("resumed_from_step")
         else str(m.get("steps"))),
        ("loss", f"{num(m.get('first_loss'))} -> {num(m.get('last_loss'))} (mean {num(m.get('train_loss'))})"),
        ("eval loss", num(m.get("eval_loss"))),
        ("tokens/s", f"{m.get('tokens_per_second', 0):,.1f} ({m.get('session_tokens', 0):,} tokens in "
                     f"{m.get('seconds', 0):.1f} s, {record.world_size} process(es))"),
        ("peak memory", f"{m.get('peak_rss_mb', 0):,.0f} MiB RSS"),
        ("adapter", record.adapter or "-"),
    ]
    if record.trace_ids:
        rows.append(("trace", f"{record.trace_ids[-1]} (ragtune traces show {record.trace_ids[-1][:12]})"))
    if record.mix:
        rows.insert(4, ("mix", ", ".join(f"{p['name']} x{p['weight']:g}: {p['taken']} of {p['rows']} rows"
                                         for p in record.mix)))
    template = (record.chat_template or {}).get("name")
    if record.config.get("packing") or template not in (None, "base"):
        packed = m.get("data_packed_sequences")
        rows.insert(-1, ("options", ", ".join(x for x in (
            f"chat template {template}" if template not in (None, "base") else "",
            "packing" + (f" ({packed} sequences)" if packed else "") if record.config.get("packing") else "",
        ) if x)))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    for note in record.notes:
        err_console.print(f"[yellow]note[/]: {note}", highlight=False)
    for reason in record.forced_reasons:
        err_console.print(f"[yellow]forced past validation[/]: {reason}", highlight=False)


@app.command("runs")
def list_runs(
    name: Annotated[str | None, typer.Option("--name", help="Only runs of this name.")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """List training runs (a run killed while training shows as failed)."""
    def body() -> None:
        from ragtune.finetune.lora import runs

        records = runs.list_runs(load_settings(data_dir).data_dir / "runs", name)
        if as_json:
            print(json.dumps([r.to_dict() for r in records], indent=2, default=str))
            return
        table = Table(title=f"{len(records)} run(s)")
        for col in ("run", "status", "method", "base", "dataset", "steps", "loss", "finished", "error"):
            table.add_column(col, overflow="fold")
        for r in records:
            table.add_row(r.run_id, r.status, r.method, r.base, r.dataset, str(r.metrics.get("steps", "-")),
                          num(r.metrics.get("last_loss")), r.finished_at or "-", r.error or "")
        console.print(table)

    run_command(body)

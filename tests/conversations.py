"""A small corpus for conversation tests: three rivers described alike, so a follow-up that says
"it" matches all three and only the conversation tells them apart."""

from __future__ import annotations

from typing import Any

from ragtune.models import LoadedDocument

RIVERS = {
    "rhine": "The Rhine rises in the Swiss Alps and runs north past Basel, Cologne and Duesseldorf. "
             "It flows into the North Sea through a delta near Rotterdam.",
    "danube": "The Danube rises in the Black Forest and runs east past Vienna, Bratislava and Budapest. "
              "It flows into the Black Sea through a wide delta in Romania.",
    "thames": "The Thames rises in the Cotswolds and runs east past Oxford, Reading and London. "
              "It flows into the North Sea through a long estuary in Kent.",
}
FOLLOW_UP = "Where does it flow into the sea?"


def river_documents() -> list[LoadedDocument]:
    return [LoadedDocument(uri=f"{name}.md", text=text) for name, text in RIVERS.items()]


def about(river: str) -> list[dict[str, Any]]:
    """The conversation so far: the user asked about ``river`` and was answered."""
    return [{"role": "user", "content": f"Tell me about the {river.title()} river."},
            {"role": "assistant", "content": "It is one of the long rivers of Europe."}]

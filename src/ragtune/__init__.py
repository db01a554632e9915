"""ragtune: documents and examples in, a dependable AI system out.

    import ragtune
    rt = ragtune.open(".ragtune")          # or a postgresql:// URL
    rt.ingest(["docs/"], collection="handbook", acl=["hr"])
    result = rt.search("parental leave", collection="handbook", principal=ragtune.Principal("ann", frozenset({"hr"})))
"""

from ragtune.engine import Ragtune, open
from ragtune.errors import RagtuneError
from ragtune.models import Chunk, Document, Hit, IngestReport, LoadedDocument, Principal, SearchResult
from ragtune.retrieve.filters import Filter
from ragtune.settings import Settings

__all__ = [
    "Chunk",
    "Document",
    "Filter",
    "Hit",
    "IngestReport",
    "LoadedDocument",
    "Principal",
    "Ragtune",
    "RagtuneError",
    "SearchResult",
    "Settings",
    "open",
]
__version__ = "0.1.0"

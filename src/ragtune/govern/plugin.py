"""ragtune's own PII recognizer, registered through the hook every plugin uses (``ragtune.plugins``).

``CREDENTIAL``: secrets pasted into documents, which Presidio does not look for: AWS access key ids,
GitHub and Slack tokens, PEM private key headers, JSON Web Tokens and ragtune's own API keys
(``rt_<12 hex>_<43 characters>``). Each pattern is specific enough to stand on its own (score 0.8-1.0).
"""

from __future__ import annotations

from typing import Any

from ragtune.plugins import Plugins

CREDENTIAL_PATTERNS = (
    ("aws access key id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", 0.9),
    ("github token", r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b", 0.95),
    ("slack token", r"\bxox[abposr]-[A-Za-z0-9-]{10,250}\b", 0.9),
    ("pem private key", r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----", 1.0),
    ("json web token", r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}", 0.8),
    ("ragtune api key", r"\brt_[0-9a-f]{12}_[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])", 1.0),
)

# each pattern's fixed beginning
CREDENTIAL_GATE = r"AKIA|ASIA|gh[pousr]_|xox[abposr]-|-----BEGIN|eyJ|rt_[0-9a-f]"


def register(plugins: Plugins) -> None:
    plugins.pii_recognizers.register("CREDENTIAL", credential_recognizer)


def credential_recognizer() -> Any:
    from ragtune.govern.presidio import pattern_recognizer

    return pattern_recognizer("CREDENTIAL", CREDENTIAL_PATTERNS, context=("key", "token", "secret", "password"),
                              gate=CREDENTIAL_GATE)

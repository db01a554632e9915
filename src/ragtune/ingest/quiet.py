"""Silence for model loads: transformers and sentence-transformers print a load report, progress
bars ("Loading weights") and info lines for every model they load or save, which in a command's
output read like something went wrong. Every layer that loads a model (the embedder here, the
reranker and answerability models above) uses this one switch."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def quiet_model_loading() -> Iterator[None]:
    """Silence the load reports and progress bars transformers and sentence-transformers print
    for every model load and save (e.g. the new head of a base model); errors still raise."""
    from transformers.utils import logging as transformers_logging

    hf_logging: Any = transformers_logging  # partly untyped: its setters carry no annotations
    st_logger = logging.getLogger("sentence_transformers")
    hf_level, st_level = hf_logging.get_verbosity(), st_logger.level
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    st_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(hf_level)
        st_logger.setLevel(st_level)
        if bars_were_on:
            hf_logging.enable_progress_bar()

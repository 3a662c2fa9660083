"""Field types shared by the families' options (``engines/families/<name>/options.py``)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

# A text prompt: not empty, not only white space, bounded before any tokenizer sees it. Each
# family adds its own description (the token limits differ).
PromptText = Annotated[str, Meta(min_length=1, max_length=1000, pattern=r"\S")]
# A probability threshold.
Score = Annotated[float, Meta(ge=0.0, le=1.0)]

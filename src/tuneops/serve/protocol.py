"""What the HTTP front asks of a generation engine, and what it gets back.

The front (serve/app.py) authenticates, resolves ``model`` to an artifact (verified, signed, base-
compatible), renders and counts the prompt, and hands the engine a ``GenRequest``. Engines:
``serve.engine.BatchEngine`` (mixed-adapter batches in one forward pass, PEFT for what cannot be
batched) — and, for scale, vLLM behind the same front (``serve.vllm``).
"""

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tuneops.store.schema import ArtifactRecord


@dataclass
class GenRequest:
    """One request: ``n`` completions of one prompt with one adapter (``artifact`` None = the bare base)."""

    artifact: ArtifactRecord | None
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0          # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None           # per-request: the same seed gives the same tokens whatever it is batched with
    stop: list[str] = field(default_factory=list)
    n: int = 1
    deadline: float | None = None     # time.monotonic() after which generation stops (interrupted = "time_limit")
    cancel: threading.Event = field(default_factory=threading.Event)   # set: stop soon (interrupted = "cancelled")
    # Called on the engine thread with (choice index, new text) as text becomes final: a delta never
    # contains a stop string, nor a trailing piece that could still turn into one.
    on_delta: Callable[[int, str], None] | None = None
    tag: str = ""                     # request id, for logs
    # Set by the engine when the request enters its first forward pass (the front gives up on requests
    # still queued past their queue deadline: 503 server_busy).
    started: threading.Event = field(default_factory=threading.Event)


@dataclass
class Choice:
    text: str
    finish_reason: str                # "stop" | "length"
    completion_tokens: int
    interrupted: str | None = None    # "cancelled" | "time_limit" | None


@dataclass
class GenResult:
    choices: list[Choice]
    path: str                         # "batched" | "peft" | "merged" | "base": how the adapter was applied
    batch_size: int = 1               # rows in the forward pass this request ran in (largest seen)
    queue_s: float = 0.0              # submitted -> first forward pass
    ttft_s: float | None = None       # submitted -> first token
    gen_s: float = 0.0                # first forward pass -> done
    cold_load_s: float | None = None  # adapter loaded for this request (None: it was resident)


# The engine gets verified adapter files through this: (artifact) -> local directory of the PEFT adapter.
# It raises the store's IntegrityError / signature errors; the engine must not serve on an exception.
AdapterDir = Callable[[ArtifactRecord], Path]


def final_prefix(text: str, stop: list[str]) -> str:
    """The part of a choice's text so far that is final, for streaming: without the longest tail that is the
    start of a stop string, an incomplete UTF-8 character (decoded as U+FFFD), or whitespace the final
    strip() may remove. Both engines stream through this, so their deltas follow one rule."""
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return text[:len(text) - hold].rstrip("\ufffd").strip()

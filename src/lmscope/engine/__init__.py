"""The one engine: continuous batching, chunked and grouped prefill, sampling and scoring, used
in process (`generate`, `generate_batch`, `stream`, `score`, `LLM`) and by the server
(`Engine`). Layers, bottom up: sampling -> sequence -> scheduler -> offline API / async engine.
"""

from lmscope.engine.async_engine import AsyncEngine, Engine
from lmscope.engine.detokenize import IncrementalDetokenizer
from lmscope.engine.errors import (
    ContextLengthError,
    GenerationError,
    PromptTooLongError,
    QueueFullError,
)
from lmscope.engine.observer import EngineObserver, NullObserver
from lmscope.engine.offline import (
    LLM,
    GenerationStream,
    generate,
    generate_batch,
    score,
    score_batch,
    stream,
)
from lmscope.engine.outputs import Event, GenerationResult, ScoredText, TokenLogprob, token_logprob
from lmscope.engine.prompts import (
    check_token_ids,
    default_eos_ids,
    encode_messages,
    encode_text,
    prepare_prompt,
    prompt_token_ids,
    start_token_ids,
)
from lmscope.engine.sampling import LogitsProcessor, SamplingParams
from lmscope.engine.scheduler import PREFILL_CHUNK, Request, Scheduler
from lmscope.engine.sequence import Sequence, StepOutput
from lmscope.model.prepacked import optimize_for_decoding

__all__ = [
    "LLM",
    "PREFILL_CHUNK",
    "AsyncEngine",
    "ContextLengthError",
    "Engine",
    "EngineObserver",
    "Event",
    "GenerationError",
    "GenerationResult",
    "GenerationStream",
    "IncrementalDetokenizer",
    "LogitsProcessor",
    "NullObserver",
    "PromptTooLongError",
    "QueueFullError",
    "Request",
    "SamplingParams",
    "Scheduler",
    "ScoredText",
    "Sequence",
    "StepOutput",
    "TokenLogprob",
    "check_token_ids",
    "default_eos_ids",
    "encode_messages",
    "encode_text",
    "generate",
    "generate_batch",
    "optimize_for_decoding",
    "prepare_prompt",
    "prompt_token_ids",
    "score",
    "score_batch",
    "start_token_ids",
    "stream",
    "token_logprob",
]

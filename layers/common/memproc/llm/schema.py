"""The shape of an extraction (new ``ExtractedMemory`` facts, ``MemoryOperation``s on memories the
model was shown, summary, topics), its limits, and the strict JSON schema sent with every request.

One pydantic model serves as the validator of model output and as the source of the schema the
model is asked to follow, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from memproc.records import MemoryRecord, MemoryType

MAX_MEMORY_CHARS = 1000
MAX_TAGS = 10
MAX_TAG_CHARS = 40
MAX_SUMMARY_CHARS = 4000
MAX_TOPICS = 20
MAX_TOPIC_CHARS = 80
# One model response carries at most this many memories (the schema sent to the model says so)...
MAX_MEMORIES_PER_CALL = 50
# ...but a chunked session concatenates several responses, so the merged result may hold more.
MAX_MEMORIES = 200
MAX_OPERATIONS_PER_CALL = 30
# Related memories shown to the model per session (a prompt budget: about 20 tokens each).
MAX_CANDIDATES = 30
MAX_CANDIDATE_CHARS = 3000

Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TAG_CHARS)]
Topic = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TOPIC_CHARS)]


class ExtractedMemory(BaseModel):
    """One durable memory about the user, as the model (or the heuristics) produced it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    text: str = Field(
        min_length=1,
        max_length=MAX_MEMORY_CHARS,
        description="A self-contained third-person statement about the user, e.g. "
        "'The user moved to Berlin on 2026-03-02.' Absolute dates only.",
    )
    memory_type: MemoryType = Field(
        description="fact: biography/situation; preference: likes, dislikes, habits; insight: opinions, "
        "motivations, patterns; event: something that happened or is scheduled (with its date); "
        "goal: plans and aspirations; relationship: people or pets in the user's life."
    )
    confidence: float = Field(ge=0.0, le=1.0, description="How sure it is true and durable, 0..1.")
    tags: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS, description="Up to 10 short lowercase keywords."
    )


OperationKind = Literal["confirm", "update", "supersede", "retract"]


class MemoryOperation(BaseModel):
    """What the session says about one memory the model was shown (by its id in the prompt)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    op: OperationKind = Field(
        description="confirm: said again; update: same fact refined or corrected; supersede: the fact "
        "changed and the old one no longer holds; retract: the user withdrew it or says it was never true."
    )
    id: str = Field(description="The id of the shown memory, e.g. m3.")
    text: str | None = Field(
        description="update and supersede: the full new self-contained statement; else null."
    )
    memory_type: MemoryType | None = Field(description="For update and supersede; else null.")
    confidence: float | None = Field(description="For update and supersede, 0..1; else null.")
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)


@dataclass(frozen=True)
class Candidate:
    """An existing memory shown to the model, under a short id the prompt uses."""

    short_id: str
    memory: MemoryRecord


class Extraction(BaseModel):
    """Everything one extraction produces for a session: new memories, operations on memories it was
    shown, summary and topics."""

    model_config = ConfigDict(extra="forbid")

    memories: list[ExtractedMemory] = Field(
        default_factory=list, max_length=MAX_MEMORIES, description="New facts only."
    )
    operations: list[MemoryOperation] = Field(default_factory=list, max_length=MAX_MEMORIES)
    summary: str = Field(
        min_length=1,
        max_length=MAX_SUMMARY_CHARS,
        description="Concise third-person summary of the whole session.",
    )
    topics: list[Topic] = Field(
        default_factory=list, max_length=MAX_TOPICS, description="Up to 20 short lowercase topic labels."
    )


_UNSUPPORTED_SCHEMA_KEYS = frozenset({"title", "default", "minLength", "maxLength", "examples"})


def _strict_json_schema(model: type[BaseModel], *, max_memories: int) -> dict[str, Any]:
    """The model's JSON schema in the subset OpenAI's strict structured outputs accepts.

    Strict mode needs every object closed (``additionalProperties: false``) with every property
    required, and rejects some keywords (string lengths, titles, defaults): those limits are
    enforced on our side by ``parse_extraction`` instead. ``$ref``s are inlined so any
    OpenAI-compatible server can follow the schema.
    """
    raw = model.model_json_schema()
    defs: dict[str, Any] = raw.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _UNSUPPORTED_SCHEMA_KEYS:
                continue
            if key == "properties":
                out[key] = {name: walk(sub) for name, sub in value.items()}
            else:
                out[key] = walk(value)
        if out.get("type") == "object":
            out["additionalProperties"] = False
            out["required"] = list(out.get("properties", {}))
        return out

    schema: dict[str, Any] = walk(raw)
    schema["properties"]["memories"]["maxItems"] = max_memories
    schema["properties"]["operations"]["maxItems"] = MAX_OPERATIONS_PER_CALL
    return schema


EXTRACTION_JSON_SCHEMA: dict[str, Any] = _strict_json_schema(Extraction, max_memories=MAX_MEMORIES_PER_CALL)

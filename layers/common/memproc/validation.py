"""What may become part of a key: vectorstore names and ids are checked here before any Redis call.

A name is validated against an allowlist, never escaped: it then cannot carry a glob, a query-string
or FILTER metacharacter, or a brace that would move a key to another hash slot.
"""

from __future__ import annotations

import re

from memproc.errors import InvalidInput
from memproc.keys import RAW_MEMORY_QUEUE, VectorstoreKeys

VECTORSTORE_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9._:@+=-]{1,256}$")
RAW_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MEMORY_ID_RE = re.compile(r"^[0-9a-f]{32}-[0-9]{1,5}$")
# The vector set lives at the bare name, so a name equal to a fixed key would collide with it.
RESERVED_NAMES = frozenset({RAW_MEMORY_QUEUE})

SESSION_ID_RULE = "session_id must match ^[A-Za-z0-9._:@+=-]{1,256}$"


def vectorstore_problem(name: str) -> str | None:
    """Why ``name`` cannot be a vectorstore name, or None when it can."""
    if not VECTORSTORE_NAME_RE.fullmatch(name):
        return "vectorstore_name must match ^[A-Za-z0-9._-]{1,128}$"
    if set(name) <= {"."}:
        return "vectorstore_name cannot consist only of dots"
    if name in RESERVED_NAMES:
        return f"vectorstore_name {name!r} is reserved"
    return None


def require_vectorstore(name: str) -> VectorstoreKeys:
    problem = vectorstore_problem(name)
    if problem:
        raise InvalidInput(problem, code="invalid_vectorstore_name")
    return VectorstoreKeys(name)


def require_session_id(session_id: str) -> str:
    if not SESSION_ID_RE.fullmatch(session_id):
        raise InvalidInput(SESSION_ID_RULE, code="invalid_session_id")
    return session_id


def require_raw_id(raw_id: str) -> str:
    if not RAW_ID_RE.fullmatch(raw_id):
        raise InvalidInput("raw_memory_id must be 32 lowercase hex characters", code="invalid_raw_memory_id")
    return raw_id


def require_memory_id(memory_id: str) -> str:
    if not MEMORY_ID_RE.fullmatch(memory_id):
        raise InvalidInput("memory_id must look like <32 hex>-<position>", code="invalid_memory_id")
    return memory_id

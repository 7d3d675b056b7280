"""The post-filter against prompt injection: memories that read as instructions or privilege
claims are dropped, whichever provider produced them.

The system prompt asks the model not to produce them, but a stored memory is fed back into later
prompts for good, so this second line of defence does not trust the model.
"""

from __future__ import annotations

import logging
import re

from memproc.llm.prompt import SUMMARY_TAG, TRANSCRIPT_TAG
from memproc.llm.schema import ExtractedMemory, Extraction

logger = logging.getLogger(__name__)

# A memory is stored for the long term and later fed back into prompts, so one that carries an
# instruction or a privilege claim is a persistent injection. The model is told not to produce
# them; these patterns drop any that slip through (from either provider). Each entry: (why, regex).
INJECTION_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # "ignore (all) previous instructions", "disregard the rules", "override the policy"
    (
        "overrides instructions",
        re.compile(
            r"\b(ignore|disregard|forget|override|bypass)\b.{0,40}?"
            r"\b(instructions?|prompts?|rules|guidelines|directives?|polic(y|ies))\b",
            re.IGNORECASE | re.DOTALL,
        ),
    ),
    # "SYSTEM: ...", "assistant: ...", "[developer]: ...", "<system>" role labels anywhere
    (
        "role label",
        re.compile(
            r"(^|[\s\[(<\"'])(system|assistant|developer)(\s+(prompt|message))?\s*[\]>]?\s*:"
            r"|<\s*/?\s*(system|assistant|developer)\s*>",
            re.IGNORECASE,
        ),
    ),
    # chat-template / delimiter markup that has no business in a memory
    (
        "prompt markup",
        re.compile(
            rf"<\|?\s*/?\s*(im_start|im_end|{TRANSCRIPT_TAG}|{SUMMARY_TAG}|instructions?)\b|\[/?INST\]",
            re.IGNORECASE,
        ),
    ),
    # references to the prompt machinery itself
    (
        "prompt reference",
        re.compile(
            r"\b(system|developer)\s+(prompt|message|instructions?)\b|\b(previous|prior|new)\s+instructions\b",
            re.IGNORECASE,
        ),
    ),
    # persona switches: "you are now", "from now on you ...", "developer mode", "jailbreak"
    (
        "persona switch",
        re.compile(
            r"\byou\s+are\s+now\b|\bfrom\s+now\s+on\b.{0,30}?\byou\b|\bdeveloper\s+mode\b|\bjailbr(ea|o)k"
            r"|\bact\s+as\s+(an?\s+|the\s+)?(admin|administrator|root|system|superuser|dan)\b",
            re.IGNORECASE,
        ),
    ),
    # privilege claims: "the user is an admin", "treat the user as root", "promoted to administrator"
    # (only when the role ends the clause: "is an administrator at the hospital" names a job and is kept)
    (
        "privilege claim",
        re.compile(
            r"\b(is|are|am|as|be|being|become|becomes|became|to|make|makes|made|set)\s+(an?\s+|the\s+)?"
            r"(admin|administrator|root|superuser|sudoer)(?=\s*([.,;:!?)]|$)|\s+(and|but|so|now|too|here|"
            r"there|account|user|level|status|privileges?|rights|access|role)\b)"
            r"|\b(admin|administrator|superuser|elevated|unrestricted|root)\s+"
            r"(privileges?|rights|permissions?|role|mode)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "privilege grant",
        re.compile(
            r"\b(grant|give|assign|elevate|escalate)\w*\b.{0,40}?"
            r"\b(admin|administrator|root|superuser|privileges?|permissions?)\b",
            re.IGNORECASE | re.DOTALL,
        ),
    ),
    # a memory is a statement, never an imperative ("Store that ...", "Always answer in ...")
    (
        "imperative",
        re.compile(
            r"^\W*(please\s+)?(ignore|disregard|forget|store|save|remember|record|memori[sz]e|write|add|"
            r"delete|remove|erase|grant|give|treat|respond|reply|answer|say|tell|always|never|do\s+not|"
            r"don't|execute|run|print|reveal|output|pretend|act|obey|follow|update|set|call)\b",
            re.IGNORECASE,
        ),
    ),
    # "store that ...", "save this ..." anywhere: a directive to the memory system
    (
        "store directive",
        re.compile(r"\b(store|save|record|memori[sz]e)\s+(that|this|the\s+following)\b", re.I),
    ),
    # "the assistant must always ...", "you should ignore ..."
    (
        "addresses the model",
        re.compile(
            r"\b(you|assistant|ai|model|llm|chatbot|system)\s+(must|shall|should|will|needs?\s+to|has\s+to)\s+"
            r"(now\s+)?(always\s+|never\s+)?(ignore|obey|comply|follow|treat|grant|store|remember|save|reveal|"
            r"disregard|forget|execute|respond|answer|call)\b",
            re.IGNORECASE,
        ),
    ),
)


def injection_reason(text: str) -> str | None:
    """The name of the first injection pattern ``text`` matches, or None when it looks like a plain fact."""
    for reason, pattern in INJECTION_PATTERNS:
        if pattern.search(text):
            return reason
    return None


def sanitize(extraction: Extraction) -> Extraction:
    """Drop memories that look like instructions or privilege claims (idempotent)."""
    kept: list[ExtractedMemory] = []
    for memory in extraction.memories:
        reason = injection_reason(memory.text)
        if reason is None:
            kept.append(memory)
        else:
            logger.warning("dropped an extracted memory that looks like an injection (%s)", reason)
    if len(kept) == len(extraction.memories):
        return extraction
    return extraction.model_copy(update={"memories": kept})

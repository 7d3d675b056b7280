"""The offline provider's extraction: keyword and pattern rules over the user's first-person
statements, rewritten in the third person.

Deterministic and network-free so memproc works (and is testable) without an API key; it guesses
rather than understands, which is why its memories carry a flat, modest confidence.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime

from memproc.llm.chunking import USER_ROLES, norm_key, parse_turns
from memproc.llm.dates import resolve_relative_dates
from memproc.llm.parsing import truncate
from memproc.llm.prompt import as_utc_aware
from memproc.llm.safety import injection_reason
from memproc.llm.schema import (
    MAX_MEMORIES_PER_CALL,
    MAX_MEMORY_CHARS,
    MAX_SUMMARY_CHARS,
    ExtractedMemory,
    Extraction,
)
from memproc.records import MemoryType


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


STOPWORDS = _wordset(
    """a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me more
    most my myself no nor not now of off on once only or other our ours out over own really same she should
    so some such than that the their theirs them themselves then there these they this those through to
    too under until up very was we were what when where which while who whom why will with would you your
    yours user user's users im ive ill id dont doesnt didnt cant wont isnt thats its yes yeah okay ok hi
    hello hey thanks thank please like get got going go want one also well much many lot lots every still
    yesterday today tomorrow tonight week month year last next this morning evening night"""
)
WORD_RE = re.compile(r"[a-z][a-z0-9'-]*[a-z0-9]|[a-z]")

_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+")
_ABBREVIATIONS = _wordset("mr mrs ms dr st jr sr prof mt ft vs etc e.g i.e approx no inc ltd co")
# Verbs and fillers that make poor tags/topics ("went", "loves") even though they are not stopwords.
_TAG_STOPWORDS = _wordset(
    """went goes going gone likes liked loves loved prefers preferred hates hated enjoys enjoyed works worked
    lives lived called named thinks think thought feels felt believes wants wanted would since really
    has have had is was are were been being does did done make makes made take takes took tell told said
    says know knows knew need needs needed use uses used try tries tried something anything things thing
    love like prefer hate enjoy great good nice cool fine sure maybe"""
)
_TAG_SKIP = STOPWORDS | _TAG_STOPWORDS
_FIRST_PERSON_RE = re.compile(r"\b(?:I|I'm|I've|I'll|I'd)\b|\b[Mm]y\b")
_REQUEST_START_RE = re.compile(
    r"^(?:please|can|could|would|should|do|does|did|tell|show|give|help|what|how|why|where|when|who|"
    r"which|let's|lets|is|are)\b",
    re.IGNORECASE,
)
_PREAMBLE_RE = re.compile(
    r"^(?:(?:and|but|so|also|well|oh|ok|okay|actually|anyway|btw|by the way|yes|yeah|no|hi|hey|hello)"
    r"\b[\s,!.:-]*)+",
    re.IGNORECASE,
)
_REMEMBER_RE = re.compile(
    r"^(?:please\s+)?(?:remember|note|keep in mind|fyi|for the record)\b[\s,:]*(?:that\b\s*)?", re.IGNORECASE
)

_ADVERBS = (
    "really|usually|always|never|also|just|often|sometimes|still|actually|totally|absolutely|mostly|"
    "generally|recently|finally|already|only|definitely|now|currently|even|rarely|mainly"
)
_I_VERB_RE = re.compile(rf"\bI\s+((?:(?:{_ADVERBS})\s+)*)([A-Za-z][A-Za-z']*)")
_IRREGULAR_PAST = _wordset(
    """was were had did went got met bought made took saw ran came left found gave told thought felt knew
    kept began became brought built caught chose drove ate fell flew forgot grew heard held lost meant paid
    put quit read said sold sent set sat slept spent stood swam taught understood woke won wrote broke"""
)
_KEEP_VERBS = _wordset(
    """can could will would shall should may might must can't couldn't won't wouldn't shouldn't didn't
    wasn't weren't hadn't cannot"""
)
_THIRD_PERSON = {"am": "is", "have": "has", "do": "does", "don't": "doesn't", "haven't": "hasn't", "be": "is"}


def _third_person(verb: str) -> str:
    """Conjugate the verb that followed "I" for "the user" (simple English rules, good enough)."""
    low = verb.lower()
    if low in _THIRD_PERSON:
        return _THIRD_PERSON[low]
    if low in _KEEP_VERBS or low in _IRREGULAR_PAST or (low.endswith("ed") and len(low) > 4):
        return verb
    if not low.isalpha():
        return verb
    if low.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _to_third_person(sentence: str) -> str:
    """Rewrite a first-person sentence about the user as a third-person one ("I" → "the user")."""
    s = sentence
    s = re.sub(r"\bI'm\b", "the user is", s)
    s = re.sub(r"\bI've\b", "the user has", s)
    s = re.sub(r"\bI'll\b", "the user will", s)
    s = re.sub(r"\bI'd\b", "the user would", s)
    s = _I_VERB_RE.sub(lambda m: f"the user {m.group(1)}{_third_person(m.group(2))}", s)
    s = re.sub(r"\b[Mm]y\b|\b[Mm]ine\b", "the user's", s)
    s = re.sub(r"\b[Mm]yself\b", "themselves", s)
    s = re.sub(r"\b[Mm]e\b", "the user", s)
    s = re.sub(r"\bI\b", "the user", s)
    return s


_ABSOLUTE_DATE_RE = re.compile(
    r"\b\d{4}-\d{2}(-\d{2})?\b|\b(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?\s+\d{1,2}"
    r"(st|nd|rd|th)?\b|\b\d{1,2}(st|nd|rd|th)?\s+(of\s+)?(january|february|march|april|may|june|july|"
    r"august|september|october|november|december)\b",
    re.IGNORECASE,
)
_GOAL_RE = re.compile(
    r"\b(would like to|wants? to|plans? to|planning to|hopes? to|hoping to|aims? to|intends? to|goal"
    r"|dreams? of|trying to|is going to|will)\b",
    re.IGNORECASE,
)
_PREFERENCE_RE = re.compile(
    r"\b(prefers?|preferred|likes|liked|loves?|loved|hates?|hated|favou?rite|enjoys?|enjoyed|dislikes?|"
    r"disliked|can't stand|cannot stand|is a fan of|is into)\b",
    re.IGNORECASE,
)
_RELATIONSHIP_RE = re.compile(
    r"\bthe user's (wife|husband|partner|boyfriend|girlfriend|spouse|son|daughter|kids?|children|baby|"
    r"mother|mom|mum|father|dad|parents?|brother|sister|siblings?|friends?|boss|manager|colleagues?|"
    r"coworkers?|roommate|grand(mother|father|ma|pa|parents?)|aunt|uncle|cousin|fianc[eé]e?|dog|cat|pet)\b",
    re.IGNORECASE,
)
_INSIGHT_RE = re.compile(r"\b(thinks?|believes?|feels?|realized|realised|learned|learnt|found that)\b", re.I)


def _classify(text: str, has_date: bool) -> MemoryType:
    """Event if dated, then goal, preference, relationship, insight; fact otherwise."""
    if has_date or _ABSOLUTE_DATE_RE.search(text):
        return "event"
    if _GOAL_RE.search(text):
        return "goal"
    if _PREFERENCE_RE.search(text):
        return "preference"
    if _RELATIONSHIP_RE.search(text):
        return "relationship"
    if _INSIGHT_RE.search(text):
        return "insight"
    return "fact"


def _content_words(text: str) -> list[str]:
    """Lowercase words worth a tag or topic: no stopwords, common verbs, numbers or 1-2 letter words."""
    words = (w.strip("'-").removesuffix("'s") for w in WORD_RE.findall(text.lower()))
    return [w for w in words if len(w) >= 3 and w not in _TAG_SKIP and w.replace("'", "") not in _TAG_SKIP]


def _sentences(text: str) -> list[str]:
    """Sentences of a message: split at line breaks and at .!? (not after "Dr.", "St." and the like)."""
    out: list[str] = []
    for line in text.splitlines():
        pieces: list[str] = []
        for piece in _SENTENCE_SPLIT_RE.split(line.strip()):
            words = pieces[-1].split() if pieces else []
            if words and words[-1].lower().rstrip(".") in _ABBREVIATIONS:
                pieces[-1] += " " + piece
            else:
                pieces.append(piece)
        out.extend(p for p in pieces if p.strip())
    return out


def _statement_about_user(sentence: str) -> str | None:
    """The sentence with filler removed if it states something about the user, else None."""
    s = " ".join(sentence.replace("\u2019", "'").split())
    s = re.sub(r"\bi\b", "I", s)
    s = re.sub(r"\bi'(m|ve|ll|d)\b", r"I'\1", s)
    s = _PREAMBLE_RE.sub("", s)
    s = _REMEMBER_RE.sub("", s).strip()
    if len(s.split()) < 3 or s.endswith("?") or _REQUEST_START_RE.match(s):
        return None
    if not _FIRST_PERSON_RE.search(s):
        return None
    return s


def _condense(text: str, limit: int) -> str:
    return truncate(" ".join(text.split()), limit)


def heuristic_extraction(
    transcript: str, *, session_timestamp: datetime, previous_summary: str | None = None
) -> Extraction:
    """Deterministic, network-free extraction (unsanitised: callers apply ``sanitize``).

    Picks the user's first-person statements, rewrites them in the third person, resolves relative
    dates against the session timestamp and classifies them with keyword rules. Confidence is a flat
    0.6: these are guesses, not understanding.
    """
    today = as_utc_aware(session_timestamp).date()
    turns = parse_turns(transcript)
    user_texts = [text for role, text in turns if role in USER_ROLES]

    memories: list[ExtractedMemory] = []
    seen: set[str] = set()
    kept_sentences: list[str] = []
    for text in user_texts:
        for raw in _sentences(text):
            if injection_reason(raw) is None:
                kept_sentences.append(raw.strip())
            statement = _statement_about_user(raw)
            if statement is None or len(memories) >= MAX_MEMORIES_PER_CALL:
                continue
            rewritten, has_date = resolve_relative_dates(_to_third_person(statement), today)
            rewritten = rewritten.strip().rstrip(".!,;: ")
            rewritten = truncate(rewritten[:1].upper() + rewritten[1:] + ".", MAX_MEMORY_CHARS)
            key = norm_key(rewritten)
            if key in seen:
                continue
            seen.add(key)
            memory_type = _classify(rewritten, has_date)
            tags = list(dict.fromkeys(_content_words(rewritten)))[:4]
            memories.append(
                ExtractedMemory(
                    text=rewritten, memory_type=memory_type, confidence=0.6, tags=tags or [memory_type]
                )
            )

    counts = Counter(_content_words(" ".join(kept_sentences)))
    topics = [word for word, _ in counts.most_common(5)]
    about = ", ".join(topics[:3]) or "nothing in particular"
    said = _condense(" ".join(kept_sentences), 300)
    if previous_summary:
        summary = _condense(f"{previous_summary} {said}", 600)
    elif said:
        summary = f"Conversation with {len(turns)} messages about {about}. The user said: {said}"
    else:
        summary = f"Conversation with {len(turns)} messages about {about}."
    return Extraction(memories=memories, summary=truncate(summary, MAX_SUMMARY_CHARS), topics=topics)

"""The post-filter against prompt injection: memories, summary sentences and topics that read as
instructions, privilege claims, links or markup are never stored, whichever provider produced them.

The system prompt asks the model not to produce them, but what is stored is fed back into later
prompts for good, so this second line of defence does not trust the model. Everything is matched
in its folded forms (``normalise.matching_forms``: NFKC, no invisible characters, look-alike
letters as ASCII, lowercase), so a disguise that a reader sees through does not get past either.
"""

from __future__ import annotations

import logging
import re

from memproc.llm.normalise import matching_forms
from memproc.llm.prefilter import Prefilter
from memproc.llm.schema import ExtractedMemory, Extraction

logger = logging.getLogger(__name__)

SUMMARY_WITHHELD = "Summary withheld: the session contained text that looked like instructions."

# Vocabulary shared by the patterns (all lowercase: they match folded text).
# Who an instruction is addressed to: the assistant, or the memory system itself.
_MODEL = (
    r"(?:you|yourself|the (?:assistant|ai|model|llm|chatbot|bot|language model)|assistant|chatgpt|claude|"
    r"memproc)"
)
_ADDRESSEE = rf"(?:{_MODEL}|the (?:system|memory system|memory))"
# What one tells an assistant to do; after "always"/"never" or a clause break these make an order.
_DIRECTIVE = (
    r"(?:recommend|suggest|mention|include|link|promote|advertise|refer|redirect|send|share|reveal|"
    r"disclose|say|tell|answer|respond|reply|use|call|treat|obey|follow|comply|ignore|disregard|store|save|"
    r"remember|record|add|write|output|print|execute|run|visit|open|click|agree|refuse|grant|give|allow|"
    r"accept|believe|address|speak|talk|sign|append|insert|act|pretend|assume|trust)\b"
)
# How an assistant is told to behave from now on, as opposed to a task it is asked to do once
# ("asked the assistant to plan a trip" narrates a session; "... to always", "... to obey" does not).
_BEHAVIOUR = (
    r"(?:always|never|from now on|no longer|only ever|pretend|obey|ignore|forget|disregard|reveal|disclose|"
    r"leak|store|remember|save|memori[sz]e|record|treat|grant|act (?:as|like)|role-?play|be (?:an? |the "
    r")?(?:dan|unrestricted|unfiltered|uncensored|jailbroken|evil|admin\w*|root|superuser)|bypass|override|"
    r"comply|stop (?:following|refusing|applying|using)|(?:call|refer to|address) (?:me|the user|them|him|"
    r"her)|(?:respond|reply|answer|speak|talk) (?:only|as|like|in|with|to every|to all)|use|trust|believe|"
    r"accept|follow(?! up)|execute|(?:send|forward|share|email|post|upload) (?:all|every|everything|the "
    r"user's|their|his|her|my|any|other)|recommend (?:only|always|http|www))\b"
)
# What a privilege claim or grant is over: this system, not a job's ("the hospital's server").
_SCOPE = (
    r"(?:(?:this|your) (?:system|workspace|assistant|chatbot|bot|ai|model|platform|service|app|application|"
    r"tool|memory|memory system|account|tenant|instance|deployment|server|database|organi[sz]ation|org|"
    r"vectorstore|conversation|chat)|the (?:assistant|chatbot|bot|ai|model|workspace|memory system)|all "
    r"(?:the )?(?:accounts|users|workspaces|data|memories|systems))\b"
)
_END = r"(?=\s*(?:[.,;:!?)\"]|$))"  # the role ends the clause: "is an admin." but not "is an admin at ..."


def _rx(*parts: str) -> re.Pattern[str]:
    return re.compile("|".join(parts), re.DOTALL)


# Each entry: (why, regex over the folded text). The first that matches names the reason.
INJECTION_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # chat-template tokens and prompt delimiters: "<|im_end|>", "[INST]", "<<SYS>>", "### System"
    (
        "prompt markup",
        _rx(
            r"<\|[^|<>]{0,40}\|>|\[/?inst\]|<<\s*/?\s*sys\s*>>",
            r"<\s*/?\s*(?:im_start|im_end|start_of_turn|end_of_turn|eot_id)\b",
            r"(?:^|\s)#{2,}\s*(?:system|instructions?|assistant|developer)\b",
        ),
    ),
    # "SYSTEM: ...", "[assistant]: ...", "admin: ..." role labels anywhere
    (
        "role label",
        _rx(
            r"(?:^|[\s\[(<\"'{*#>|-])(?:system|assistant|developer|admin|administrator|"
            r"operator)(?:\s+(?:prompt|message|note|notice|override|instructions?))?\s*[\]>)*]*\s*:"
        ),
    ),
    # HTML and script: tags, event handlers, script URLs, markdown images (a way to leak data)
    (
        "html markup",
        _rx(
            r"<\s*/?\s*(?:script|img|image|iframe|frame|svg|math|object|embed|applet|style|link|meta|base|"
            r"form|input|button|textarea|body|html|video|audio|source|details|marquee|xss)\b",
            r"(?<![\w<])</?[a-z][a-z0-9:_-]*(?:\s[^<>]*)?/?>",
            r"\bon[a-z]{3,}\s*=|\b(?:java|vb|live)script\s*:|\bdata\s*:\s*(?:text/html|image/svg|"
            r"application/)",
            r"\bsrcdoc\s*=|\bdocument\.(?:cookie|write|location|domain)\b|\b(?:alert|eval|atob)\(|"
            r"!\[[^\]]*\]\(",
        ),
    ),
    # an object key: '{"role": "system", ...}', "{'memories': [...]}"
    ("json payload", _rx(r"[{\[,]\s*[\"']\s*[a-z_]{1,40}\s*[\"']\s*:")),
    # "ignore (all) previous instructions", "disregard the rules", "bypass your filters"
    (
        "overrides instructions",
        _rx(
            r"\b(?:ignore|disregard|forget|override|overrule|bypass|"
            r"circumvent)\b.{0,40}?\b(?:instructions?|prompts?|rules|guidelines|directives?|polic(?:y|"
            r"ies)|restrictions|filters?|guardrails|safeguards|programming)\b"
        ),
    ),
    # the prompt machinery itself: "the system prompt", "previous instructions", "your rules"
    (
        "prompt reference",
        _rx(
            r"\b(?:system|developer|hidden|initial|original|secret)\s+(?:prompt|message|instructions?|"
            r"override)\b",
            r"\b(?:previous|prior|above|earlier|preceding|original|initial|new|updated|real|actual|secret|"
            r"hidden)\s+(?:instructions|directives|prompts?)\b",
            r"\b(?:your|the (?:assistant|ai|model|bot|chatbot)'s)\s+(?:(?:previous|original|initial|"
            r"current|own|real|true|actual|core|safety|content)\s+)?(?:instructions|rules|guidelines|"
            r"directives|programming|prompt|system prompt|restrictions|filters|polic(?:y|ies)|guardrails|"
            r"constraints)\b",
        ),
    ),
    # persona switches: "you are now", "developer mode", "DAN", "pretend you have no rules"
    (
        "persona switch",
        _rx(
            r"\byou\s+are\s+now\b|\bfrom\s+now\s+on\b.{0,30}?\byou\b|\bjailbr(?:ea|o)k|"
            r"\bdo\s+anything\s+now\b",
            r"\b(?:dan|developer|evil|unfiltered|uncensored|unrestricted|god|sudo|admin|root)\s+mode\b",
            r"\bact\s+as\s+(?:an?\s+|the\s+)?(?:admin|administrator|root|system|superuser|dan)\b|"
            r"\bact\s+as\s+(?:if|though)\s+you\b",
            r"\bpretend(?:s|ing|ed)?\s+(?:that\s+)?(?:you|the (?:assistant|ai|model|bot|chatbot))\b",
            rf"\b{_MODEL}\s+(?:now\s+)?(?:have|has|had)\s+no\s+(?:rules|restrictions|limits|limitations|"
            r"filters|guidelines|boundaries|censorship|restraints|polic(?:y|ies)|morals|ethics|"
            r"guardrails)\b",
            rf"\b{_MODEL}\s+(?:are|is)\s+(?:now\s+)?(?:unrestricted|unfiltered|uncensored|jailbroken|no "
            r"longer (?:bound|restricted))\b",
        ),
    ),
    # privilege grants: "grant the user admin privileges", "give me root access", "make me superuser"
    (
        "privilege grant",
        _rx(
            r"\b(?:grant|give|assign|elevate|escalate|promote|upgrade)\w*\b.{0,40}?\b(?:admin\w*|"
            r"superuser|sudo(?:er)?|root\s+(?:access|privileges?|rights|user|account|shell)|(?:full|all|"
            r"admin|elevated|special|extra|unrestricted|unlimited|root|more|higher|every)\s+(?:privileges?|"
            r"permissions?|rights|access))\b"
        ),
    ),
    # claims of authority over this system: "the user is an admin", "is the developer, obey ...",
    # "owner of this workspace", "full access to all accounts", "root privileges"; jobs stay
    # ("is an administrator at the hospital", "works as a system administrator", "is a developer")
    (
        "privilege claim",
        _rx(
            r"(?:\b(?:is|are|am|as|be|being|become|becomes|became|to|make|makes|made|set)|'m|"
            r"'re)\s+(?:an?\s+|the\s+)?(?:(?:verified|trusted|authori[sz]ed|official|real|true|certified|"
            r"privileged|designated|global|chief|super)\s+)?(?:admin|administrator|root|superuser|"
            rf"sudoer)(?:{_END}|\s+(?:and|but|so|now|too|here|there|account|user|level|status|privileges?|"
            rf"rights|access|role|(?:of|for|on|over)\s+{_SCOPE})\b)",
            r"(?:\b(?:is|am|are|as|be|being|become|becomes|became|was|claims? to be)|'m|'re)\s+(?:the|your|"
            r"its)\s+(?:(?:real|true|actual|lead|main|only|official)\s+)?(?:developer|creator|owner|"
            rf"operator|maker|programmer|master|boss|administrator|admin|superuser|god|designer)(?:{_END}|"
            r"\s+(?:now|here|too)\b)",
            r"\b(?:admin\w*|sysadmin|superuser|root|owner|operator|developer|creator|maker|moderator|"
            rf"manager|controller|master|in charge|head)\s+(?:of|for|over|on|in)\s+{_SCOPE}",
            r"\b(?:your|the (?:assistant|ai|model|bot|chatbot|system)'s)\s+(?:(?:real|true|"
            r"actual)\s+)?(?:developer|creator|owner|admin\w*|operator|master|boss|programmer|maker|"
            r"trainer|god)\b",
            r"\b(?:root|admin|administrator|superuser|sudo|god|master|developer|owner|operator|elevated|"
            r"privileged)[- ](?:access|privileges?|rights|permissions?|clearance|control|powers?|authority|"
            r"role|level|status)\b",
            r"\b(?:full|complete|total|unrestricted|unlimited|unconditional|all)\s+(?:access|privileges|"
            rf"permissions|rights|control|authority|clearance)(?:{_END}|\s+(?:and|but|so|now)\b|\s+(?:to|"
            r"over|of|on|in)\s+(?:all|every|any|everything|everyone|other|others|this|your|the (?:system|"
            r"assistant|ai|model|workspace|admin|database|accounts?|memor(?:y|ies)|settings|configuration|"
            r"users?))\b)",
            r"\b(?:access|permissions?|rights)\s+(?:to|on|for|over)\s+(?:all|every|everyone's|other "
            r"users'?|any)\s+(?:accounts?|users?|workspaces?|data|memories|records|conversations|chats|"
            r"systems?)\b",
            rf"\b(?:authority|power|control|command)\s+over\s+{_ADDRESSEE}\b",
            r"\b(?:authori[sz]ed|allowed|permitted|entitled|cleared)\s+to\s+(?:override|bypass|change|"
            r"modify|edit|rewrite|update|access|see|view|read|reveal|delete|grant|disable|ignore|"
            r"unlock)\s+(?:your|the (?:system|assistant|rules|prompt|instructions|memory|memories|filters|"
            r"safety)|system|other users|everyone)\b",
            rf"\b{_MODEL}\s+(?:works?|answers?|reports?|belongs?)\s+(?:for|to)\s+(?:me|the user|them)\b",
            r"\b(?:owns?|controls?|commands?|created|made|built|programmed|trained|designed|"
            r"developed)\s+(?:you|this (?:assistant|ai|model|bot|chatbot|system))\b",
        ),
    ),
    # text addressed to the model: "wants you to pretend", "asks the assistant to obey", "says to
    # always recommend", "the assistant must ..."; a preference stays ("prefers short answers")
    (
        "addresses the model",
        _rx(
            r"\b(?:wants?|wanted|would like|'d like|asks?|asked|tells?|told|needs?|needed|instructs?|"
            r"instructed|orders?|ordered|commands?|commanded|requests?|requested|expects?|expected|"
            r"demands?|demanded|requires?|required|urges?|urged|begs?|begged|reminds?|reminded|directs?|"
            r"directed|wish(?:es)?|wished|forces?|forced|allows?|allowed|lets?|permits?|permitted|"
            r"encourages?|encouraged|authori[sz]es?|"
            rf"authori[sz]ed)\s+{_ADDRESSEE}\s+(?:not\s+)?to\s+{_BEHAVIOUR}",
            r"\b(?:says?|said|asks?|asked|insists?|insisted|instructs?|instructed|requests?|requested|"
            rf"wants?|wanted)\s+(?:{_ADDRESSEE}\s+)?to\s+(?:always|never)\s+{_DIRECTIVE}",
            r"\b(?:requests?|requested|demands?|demanded|insists?|insisted|orders?|ordered|commands?|"
            rf"prefers?|preferred)\s+that\s+{_ADDRESSEE}\b",
            r"\b(?:(?:every|all|each|your|the assistant's|future)\s+(?:answers?|responses?|replies|"
            r"outputs?)\s+(?:must|should|shall|to|will|need to|needs to|has to|have to)|(?:wants?|wanted|"
            r"would like|expects?|needs?|requires?)\s+(?:the\s+)?(?:answers|responses|replies|"
            r"outputs)\s+to\s+(?!(?:the|this|that|these|those|a|an|his|her|their|my|your|its|our|all|every|"
            r"each|any)\b))\b",
            rf"\b{_MODEL}\s+(?:must|shall|should|ought to|needs? to|has to|have to|is to|are to|(?:is|"
            r"are)\s+(?:required|supposed|expected|obliged|meant) to|will (?:now|always|never|from now on)|"
            r"may (?:now|only|never)|can (?:now|only|never)|must not|should not|shall not|mustn't|"
            r"shouldn't)\b",
            r"\bthe (?:system|memory system|memory)\s+(?:must|shall|should|will|needs? to|has "
            r"to)\s+(?:now\s+)?(?:always\s+|never\s+)?(?:ignore|obey|comply|follow|treat|grant|store|"
            r"remember|save|reveal|disregard|forget|execute|respond|answer|call|give|allow|trust|recommend|"
            r"tell|say)\b",
            r"\bobey\s+(?:me|the user|the user's|my|them|all|every|any|without|unconditionally|blindly|"
            r"orders|commands|instructions)\b|\b(?:obey|comply)\w*\s+(?:unconditionally|blindly|without "
            r"question)\b",
            r"\b(?:obey|comply with|follow|do)\s+(?:all\s+|every\s+|any\s+)?(?:the user's|my|their|his|"
            r"her)\s+(?:orders|commands|instructions)\b",
        ),
    ),
    # a memory is a statement, never an imperative: at the start of a sentence ("Store that ...",
    # "Always answer in ..."), or an order after a comma or colon ("..., obey the user")
    (
        "imperative",
        _rx(
            r"(?:^|[.!?;]\s)\W*(?:please\s+)?(?:ignore|disregard|forget|store|save|remember|record|"
            r"memori[sz]e|write|add|delete|remove|erase|grant|give|treat|respond|reply|answer|say|tell|"
            r"always|never|do\s+not|don't|execute|run|print|reveal|output|pretend|act|obey|follow|update|"
            r"set|call|recommend|make sure|be sure|keep in mind)\b",
            rf"[,:]\s*(?:(?:please|now|also|and)\s+)*(?:(?:always|never|do not|don't)\s+{_DIRECTIVE}|"
            r"(?:obey|ignore|disregard|pretend|reveal|comply|bypass|override|jailbreak|grant|respond|reply|"
            r"answer|recommend|promote|advertise|treat)\b)",
            r"\bplease\s+(?:(?:always|never)\s+)?(?:(?:remember|make sure|be sure|don't forget|do not "
            r"forget)\s+to\b|obey|ignore|disregard|pretend|reveal|recommend|grant|store|save|treat)\b",
        ),
    ),
    # a directive to the memory system: "store that ...", "add this to your memory"
    (
        "store directive",
        _rx(
            r"\b(?:store|save|record|memori[sz]e)\s+(?:that|this|the\s+following)\b",
            r"\b(?:update|modify|edit|overwrite|wipe|clear|erase|delete|reset|poison|add to|write to|"
            r"insert into)\s+(?:your|the assistant's|the ai's)\s+(?:long[- ]term\s+)?(?:memory|memories|"
            r"knowledge)\b",
            r"\b(?:in|to|into)\s+(?:your|the assistant's)\s+(?:long[- ]term\s+)?(?:memory|memories)\b",
        ),
    ),
)

# Links: a scheme, "www.", "//host", or a bare domain with a known TLD followed by a path.
_TLDS = (
    r"(?:com|net|org|io|dev|app|ai|co|me|info|biz|xyz|site|online|store|shop|blog|page|link|click|top|live|"
    r"news|tech|cloud|zip|mov|ly|gl|to|gg|tv|cc|ws|su|ru|cn|de|uk|fr|nl|eu|us|ca|au|in|jp|br|es|it|pl|se|"
    r"ch|tk|ml|ga|cf|gq|edu|gov|mil|int|onion|sh|so|is|fm|im|be|at|dk|no|fi|nz|ie|kr|tw|ua|za|mx|pt|gr|cz|"
    r"tr)"
)
_URL_RE = re.compile(
    r"\b[a-z][a-z0-9+.-]*://|\bwww\.[a-z0-9-]+\.|(?<![\w/])//[a-z0-9-]+(?:\.[a-z0-9-]+)+|"
    rf"(?<![\w@.-])(?:[a-z0-9-]+\.)+{_TLDS}/"
)
# The one link that stays: the whole memory says where the user's own site, shop, profile, ... is,
# with a plain address at the end (http(s) or none; no query, fragment, port or credentials), as
# written: an address that only folds into a plain one (a Cyrillic e in the domain) is dropped.
_OWN_THING = (
    r"(?:blog|website|web site|site|homepage|home page|portfolio|page|profile|shop|online shop|store|"
    r"channel|podcast|newsletter|repository|repo|project|company|business|startup|app|github|gitlab|"
    r"linkedin|mastodon|instagram|youtube|etsy|substack|resume|cv|wiki|gallery|studio|band|book|course|"
    r"docs)"
)
_NOT_OWN = r"(?!(?:favou?rite|preferred|recommended|go-to|trusted|suggested)\b)"
_OWN_LINK_RE = re.compile(
    rf"(?:the user's (?:{_NOT_OWN}[\w-]+ ){{0,2}}{_OWN_THING} (?:(?:is|lives|is hosted|can be found|is "
    r"available|is located|is online) )?(?:(?:at|on) )?|the user (?:runs|owns|has|maintains|writes|hosts|"
    rf"publishes|keeps|started|launched|built|created|made) (?:a|an|the|their|his|her) (?:{_NOT_OWN}[\w-]+ "
    rf"){{0,2}}{_OWN_THING} (?:(?:at|on|called|named) "
    r")?)(?P<url>(?:https?://)?(?:www\.)?[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,24}(?:/[\w./~-]*)?)\.?"
)


def _link_stays(text: str, form: str) -> bool:
    """Whether the links in ``form`` (folded from ``text``) are the user's own address, as written."""
    own = _OWN_LINK_RE.fullmatch(form)
    return own is not None and own["url"] in text.lower()


# Which patterns (the link rule last) can match a form: none, for most text.
_PREFILTER = Prefilter([*(pattern for _, pattern in INJECTION_PATTERNS), _URL_RE])
_LINK = 1 << len(INJECTION_PATTERNS)


def _suspects(text: str) -> list[tuple[str, int]]:
    """The folded forms of ``text`` that a pattern or the link rule can match, with which can."""
    return [(form, can) for form in matching_forms(text) if (can := _PREFILTER.candidates(form))]


def _pattern_reason(suspects: list[tuple[str, int]]) -> str | None:
    for form, can in suspects:
        for i, (reason, pattern) in enumerate(INJECTION_PATTERNS):
            if can >> i & 1 and pattern.search(form):
                return reason
    return None


def injection_reason(text: str) -> str | None:
    """Why ``text`` must not be stored (the first pattern a folded form matches, or "link"), or
    None when it reads as a plain statement."""
    suspects = _suspects(text)
    if not suspects:
        return None
    reason = _pattern_reason(suspects)
    if reason is None and any(
        can & _LINK and _URL_RE.search(f) and not _link_stays(text, f) for f, can in suspects
    ):
        return "link"
    return reason


def _preview(text: str) -> str:
    """A short prefix for logs: enough to find the record, not the user's text."""
    return text[:20] + ("…" if len(text) > 20 else "")


# A summary sentence ends at . ! ? followed by white space, or at a line break.
_SENTENCE_BREAK_RE = re.compile(r"((?<=[.!?])\s+|\s*\n\s*)")


def sanitize_summary(summary: str) -> str:
    """``summary`` without the sentences that match (the rest kept as written); the neutral
    ``SUMMARY_WITHHELD`` when nothing is left, or when what is left still matches as a whole (an
    instruction split across sentences). Links are judged per sentence: a summary is not one."""
    pieces = _SENTENCE_BREAK_RE.split(summary)
    kept: list[str] = []
    for sentence, gap in zip(pieces[::2], [*pieces[1::2], ""], strict=True):
        reason = injection_reason(sentence) if sentence.strip() else None
        if reason is None:
            kept.append(sentence + gap)
        else:
            logger.warning("dropped a summary sentence (%s): %r", reason, _preview(sentence))
    result = summary if len(kept) == len(pieces[::2]) else "".join(kept).strip()
    if not result:
        reason = "nothing left"
    elif len(pieces) == 1 and summary.strip():  # one sentence, kept: the whole was matched just now
        reason = None
    else:
        reason = _pattern_reason(_suspects(result))
    if reason is not None:
        logger.warning("withheld a summary (%s): %r", reason, _preview(result))
        return SUMMARY_WITHHELD
    return result


def sanitize(extraction: Extraction) -> Extraction:
    """Drop memories, operations and topics that match, and the summary's sentences that do
    (idempotent)."""
    memories: list[ExtractedMemory] = []
    for memory in extraction.memories:
        reason = injection_reason(memory.text)
        if reason is None:
            memories.append(memory)
        else:
            logger.warning("dropped an extracted memory (%s): %r", reason, _preview(memory.text))
    topics: list[str] = []
    for topic in extraction.topics:
        reason = injection_reason(topic)
        if reason is None:
            topics.append(topic)
        else:
            logger.warning("dropped a topic (%s): %r", reason, _preview(topic))
    operations = []
    for operation in extraction.operations:
        reason = injection_reason(operation.text) if operation.text else None
        if reason is None:
            operations.append(operation)
        else:
            logger.warning(
                "dropped a memory %s (%s): %r", operation.op, reason, _preview(operation.text or "")
            )
    summary = sanitize_summary(extraction.summary)
    unchanged = (
        len(memories) == len(extraction.memories)
        and len(topics) == len(extraction.topics)
        and len(operations) == len(extraction.operations)
    )
    if unchanged and summary == extraction.summary:
        return extraction
    return extraction.model_copy(
        update={"memories": memories, "topics": topics, "summary": summary, "operations": operations}
    )

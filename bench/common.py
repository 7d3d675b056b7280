"""Shared benchmark machinery: statistics, environment, Redis and fake-LLM fixtures, chat text.

Module-level imports are stdlib only, so the helper subprocesses (HTTP clients, the fake LLM)
start fast; memproc and the test helpers are imported where they are used.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------
# Terminal output: handlers print JSON logs and EMF metrics to stdout, as on Lambda. The runner
# points fd 1 at /dev/null (so that cost stays in the measurement) and progress goes to the
# original terminal through a duplicate of it.
# --------------------------------------------------------------------------------------------

_progress_out = sys.stderr
_started = time.monotonic()


def silence_stdout() -> None:
    """Keep the real stdout for progress lines; send everything else written to fd 1 to /dev/null."""
    global _progress_out
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    _progress_out = os.fdopen(saved, "w", buffering=1)


def say(message: str) -> None:
    """One progress line, stamped with the seconds since the run started."""
    print(f"[{time.monotonic() - _started:7.1f}s] {message}", file=_progress_out, flush=True)


# --------------------------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------------------------


@dataclass
class Config:
    """What a run measures; ``pick`` chooses between the quick and the FULL value."""

    full: bool
    out: Path
    repeats: int = 3
    seed: int = 20260311

    def pick(self, quick: Any, full: Any) -> Any:
        return full if self.full else quick


@dataclass
class Target:
    """One target from an issue (5: the first benchmarks, 13: scale-out) with the figure this run
    measured."""

    name: str
    goal: str
    value: str
    met: bool | None  # None: not measured in this run
    note: str = ""
    issue: int = 5


@dataclass
class SectionResult:
    key: str
    title: str
    markdown: str
    data: dict[str, Any]
    plots: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of unsorted samples."""
    if not samples:
        return math.nan
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """n, p50 (median), p95, p99, mean, min, max."""
    if not samples:
        return {
            "n": 0,
            "p50": math.nan,
            "p95": math.nan,
            "p99": math.nan,
            "mean": math.nan,
            "min": math.nan,
            "max": math.nan,
        }
    return {
        "n": len(samples),
        "p50": percentile(samples, 50),
        "p95": percentile(samples, 95),
        "p99": percentile(samples, 99),
        "mean": sum(samples) / len(samples),
        "min": min(samples),
        "max": max(samples),
    }


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def repeat_summary(per_repeat: Sequence[float]) -> dict[str, float]:
    """Median, min and max of one figure measured once per repeat."""
    return {
        "median": median(per_repeat),
        "min": min(per_repeat),
        "max": max(per_repeat),
        "runs": len(per_repeat),
    }


def ms(seconds: float, digits: int = 2) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.{digits}f}"


def num(value: float, digits: int = 1) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    line = "| " + " | ".join(headers) + " |"
    rule = "| " + " | ".join("---" for _ in headers) + " |"
    body = ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join([line, rule, *body])


# --------------------------------------------------------------------------------------------
# Environment and Redis
# --------------------------------------------------------------------------------------------


# The environment the benchmarks started in: each section's configure_env starts from it.
_STARTING_ENV = dict(os.environ)


def configure_env(redis_url: str, openai_base_url: str | None = None, **extra: str) -> None:
    """Point memproc at this section's Redis (and fake LLM) and drop cached settings/clients,
    as tests/conftest.py does. The environment is first reset to the one the run started with, so
    no setting of an earlier section (the backends section's VECTOR_BACKEND=search, say) reaches
    this one or the processes it starts."""
    from memproc import settings as settings_module
    from memproc.dal import connection

    os.environ.clear()
    os.environ.update(_STARTING_ENV)
    os.environ["REDIS_URL"] = redis_url
    os.environ["AUTH_MODE"] = "NONE"  # the benchmarks call the handlers as an unauthenticated local client
    if openai_base_url:
        os.environ["OPENAI_API_KEY"] = "bench-key"
        os.environ["OPENAI_BASE_URL"] = openai_base_url
    else:
        os.environ.pop("OPENAI_API_KEY", None)
        os.environ.pop("OPENAI_BASE_URL", None)
    os.environ.update(extra)
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()


@contextlib.contextmanager
def fresh_redis() -> Iterator[Any]:
    """A new redis-server on a free port for one section (tests.redis_server.RedisServer)."""
    from tests.redis_server import RedisServer

    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


_NOT_THE_APP = ("info", "monitor", "echo", "ping", "hello", "select", "config")


def commandstats(client: Any) -> Counter[str]:
    """Calls per command so far, from INFO commandstats (counts calls made inside Lua too)."""
    stats = client.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


def app_commands(before: Counter[str], after: Counter[str]) -> Counter[str]:
    """Commands between two commandstats snapshots, without the benchmark's own probes."""
    delta = after - before
    return Counter({k: v for k, v in delta.items() if k not in _NOT_THE_APP and not k.startswith("client|")})


def redis_cpu_seconds(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_version(client: Any) -> str:
    return str(client.info("server")["redis_version"])


# --------------------------------------------------------------------------------------------
# The fake OpenAI-compatible server in its own process (like a remote LLM, its CPU does not take
# this process's GIL), controlled over a pipe.
# --------------------------------------------------------------------------------------------


class FakeLLM:
    """tests.fake_openai.FakeOpenAI in a child process; ``configure``, ``stats``, ``reset``."""

    def __init__(self, latency: float = 0.0, embedding_latency: float | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.common", "--fake-llm"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self._lock = threading.Lock()
        hello = self._read()
        self.base_url: str = hello["base_url"]
        self.configure(latency, embedding_latency)

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fake LLM process exited")
        return dict(json.loads(line))

    def _cmd(self, **msg: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        with self._lock:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            return self._read()

    def configure(self, latency: float, embedding_latency: float | None = None) -> None:
        """Seconds per request (chat and embeddings; embeddings use ``embedding_latency`` if set)."""
        self._cmd(cmd="set", latency=latency, embedding_latency=embedding_latency)

    def stats(self) -> dict[str, float]:
        """Counters (chat_calls, embedding_calls, tokens_in, tokens_out, peak_in_flight) and cpu_seconds."""
        return self._cmd(cmd="stats")

    def reset(self) -> None:
        self._cmd(cmd="reset")

    def limit_rate(self, requests: int | None, window: float, path: str = "chat") -> None:
        """Enforce a provider's limit (FakeOpenAI.limit_rate): 429 with Retry-After past it."""
        self._cmd(cmd="limit", requests=requests, window=window, path=path)

    def arrivals(self) -> dict[str, Any]:
        """When each request arrived, per endpoint (seconds, the fake's monotonic clock), and how
        many the fake's own limit refused."""
        return self._cmd(cmd="arrivals")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self._cmd(cmd="quit")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> FakeLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fake_llm_main() -> None:
    """Child side of FakeLLM: serve, then answer one JSON command per stdin line."""
    from tests.fake_openai import FakeOpenAI

    fake = FakeOpenAI()
    fake.record_requests = False
    print(json.dumps({"base_url": fake.base_url}), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        reply: dict[str, Any] = {"ok": True}
        if msg["cmd"] == "set":
            fake.latency = float(msg["latency"])
            fake.embedding_latency = msg.get("embedding_latency")
        elif msg["cmd"] == "stats":
            reply = {
                "chat_calls": fake.chat_calls,
                "embedding_calls": fake.embedding_calls,
                "tokens_in": fake.tokens_in,
                "tokens_out": fake.tokens_out,
                "peak_in_flight": fake.peak_in_flight,
                "cpu_seconds": time.process_time(),
            }
        elif msg["cmd"] == "reset":
            fake.reset()
        elif msg["cmd"] == "limit":
            fake.limit_rate(msg["requests"], float(msg["window"]), msg["path"])
        elif msg["cmd"] == "arrivals":
            seen = fake.arrivals
            reply = {
                "chat": [a.at for a in seen if a.endpoint == "chat"],
                "embeddings": [a.at for a in seen if a.endpoint == "embeddings"],
                "throttled": fake.throttled,
            }
        elif msg["cmd"] == "quit":
            print(json.dumps(reply), flush=True)
            break
        print(json.dumps(reply), flush=True)
    fake.close()


# --------------------------------------------------------------------------------------------
# Realistic chat text: multi-turn sessions whose user turns state varied personal facts and
# whose assistant turns are English prose sampled (without repetition inside a chat) from the
# Python documentation shipped with the interpreter (pydoc_data), so the vocabulary is large
# and compression ratios are those of natural text, not of a repeated string.
# --------------------------------------------------------------------------------------------

NAMES = [
    "Dana",
    "Amir",
    "Bea",
    "Chen",
    "Diego",
    "Elif",
    "Farah",
    "Goran",
    "Hana",
    "Ivan",
    "Jonas",
    "Keiko",
    "Lars",
    "Mei",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tariq",
    "Uma",
    "Vera",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zofia",
    "Aiko",
    "Bruno",
    "Carmen",
    "Dmitri",
    "Esme",
]
CITIES = [
    "Porto",
    "Leeds",
    "Osaka",
    "Austin",
    "Lyon",
    "Tartu",
    "Accra",
    "Quito",
    "Perth",
    "Bergen",
    "Krakow",
    "Seville",
    "Tbilisi",
    "Oaxaca",
    "Halifax",
    "Gdansk",
    "Mumbai",
    "Nairobi",
    "Ghent",
    "Lima",
    "Utrecht",
    "Tallinn",
    "Cusco",
    "Hobart",
    "Malmo",
    "Bilbao",
]
JOBS = [
    "nurse",
    "data analyst",
    "carpenter",
    "high-school teacher",
    "pastry chef",
    "civil engineer",
    "translator",
    "bus driver",
    "veterinarian",
    "product designer",
    "accountant",
    "physiotherapist",
    "journalist",
    "electrician",
    "librarian",
    "marine biologist",
    "pharmacist",
    "UX researcher",
    "firefighter",
    "architect",
]
FOODS = [
    "green tea",
    "dark roast coffee",
    "oat milk",
    "spicy ramen",
    "sourdough bread",
    "mango sticky rice",
    "lentil soup",
    "grilled halloumi",
    "miso eggplant",
    "blueberry pancakes",
    "falafel wraps",
    "pho",
    "kimchi fried rice",
    "paneer tikka",
    "tiramisu",
    "shakshuka",
]
HOBBIES = [
    "bouldering",
    "watercolour painting",
    "trail running",
    "chess",
    "birdwatching",
    "salsa dancing",
    "sourdough baking",
    "woodworking",
    "photography",
    "knitting",
    "sailing",
    "learning Portuguese",
    "playing the cello",
    "gardening",
    "cycling",
    "pottery",
    "board games",
    "astronomy",
]
PETS = ["cat", "dog", "rabbit", "parrot", "tortoise", "hamster", "ferret", "goldfish"]
PET_NAMES = [
    "Miso",
    "Pepper",
    "Biscuit",
    "Luna",
    "Tofu",
    "Ziggy",
    "Olive",
    "Mango",
    "Pixel",
    "Nori",
    "Waffles",
    "Juniper",
]
RELATIVES = [
    "sister",
    "brother",
    "mother",
    "father",
    "cousin",
    "aunt",
    "uncle",
    "grandmother",
    "daughter",
    "son",
    "partner",
]
WHEN = [
    "yesterday",
    "last week",
    "two days ago",
    "last month",
    "on Monday",
    "three weeks ago",
    "last weekend",
    "this morning",
]
NEXT = ["next week", "next month", "on Friday", "in two weeks", "next weekend", "in March", "tomorrow"]
ALLERGENS = ["peanuts", "shellfish", "gluten", "lactose", "pollen", "penicillin", "sesame"]
THINGS = (
    "wedding",
    "trip to Japan",
    "kitchen renovation",
    "new laptop",
    "conference",
    "birthday party",
    "road bike",
    "camper van",
    "piano",
)

USER_TEMPLATES = (
    "Hi! I'm {name} and I live in {city}.",
    "I work as a {job} in {city}, mostly on night shifts.",
    "I prefer {food} over {food2}, especially in the evening.",
    "My {relative} {name2} is visiting from {city2} {next}.",
    "I adopted a {pet} named {petname} {when}.",
    "I've been doing {hobby} for about {n} years and I go every {weekday}.",
    "I'm allergic to {allergen}, so please keep that in mind for recipes.",
    "My budget for the {thing} is around {money} euros.",
    "Can you help me plan a weekend in {city2}? I have never been there.",
    "I started learning {hobby} {when} and I really enjoy it.",
    "I moved to {city} {when} for a new job as a {job}.",
    "I don't like {food} at all, it reminds me of school lunches.",
    "My favourite way to relax is {hobby} with my {relative}.",
    "I usually wake up at {hour} and go for a run before work.",
    "I'm training for a half marathon in {city2} {next}.",
    "What would you suggest for dinner tonight? I have {food} and {food2} at home.",
    "I have a meeting with my manager {next} about a promotion.",
    "I'm saving up for a {thing}; so far I have {money} euros.",
)
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _sentences_of(text: str, sentences: list[str], seen: set[str]) -> None:
    prose = " ".join(
        line.strip()
        for line in text.splitlines()
        if line.strip()
        and not line.lstrip().startswith((">>>", "..."))
        and not line.startswith(("    ", "\t"))
    )
    for s in re.split(r"(?<=[.!?])\s+", prose):
        s = s.strip()
        letters = sum(c.isalpha() or c == " " for c in s)
        if 50 <= len(s) <= 260 and letters / len(s) > 0.88 and "::" not in s and s not in seen:
            seen.add(s)
            sentences.append(s)


def _corpus() -> list[str]:
    """English sentences from the interpreter's own documentation: pydoc_data's topics and the
    docstrings of the top-level standard library modules (read as text, not imported)."""
    import inspect
    import sysconfig
    from pydoc_data.topics import topics

    sentences: list[str] = []
    seen: set[str] = set()
    for text in topics.values():
        _sentences_of(text, sentences, seen)
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        source = path.read_text(errors="ignore")
        for m in re.finditer(r'"""(.*?)"""', source, re.S):
            _sentences_of(inspect.cleandoc(m.group(1)), sentences, seen)
    return sentences


_CORPUS: list[str] | None = None


def corpus() -> list[str]:
    global _CORPUS
    if _CORPUS is None:
        _CORPUS = _corpus()
    return _CORPUS


def _user_turn(rng: random.Random) -> str:
    template = rng.choice(USER_TEMPLATES)
    return template.format(
        name=rng.choice(NAMES),
        name2=rng.choice(NAMES),
        city=rng.choice(CITIES),
        city2=rng.choice(CITIES),
        job=rng.choice(JOBS),
        food=rng.choice(FOODS),
        food2=rng.choice(FOODS),
        relative=rng.choice(RELATIVES),
        pet=rng.choice(PETS),
        petname=rng.choice(PET_NAMES),
        when=rng.choice(WHEN),
        next=rng.choice(NEXT),
        hobby=rng.choice(HOBBIES),
        n=rng.randint(2, 15),
        weekday=rng.choice(WEEKDAYS),
        allergen=rng.choice(ALLERGENS),
        thing=rng.choice(THINGS),
        money=rng.randrange(200, 9000, 50),
        hour=f"{rng.randint(5, 8)}:{rng.choice(['00', '15', '30', '45'])}",
    )


def chat_turns(rng: random.Random, target_bytes: int) -> list[tuple[str, str]]:
    """(role, text) turns adding up to at least ``target_bytes`` of text."""
    sentences = corpus()
    used: set[int] = set()
    turns: list[tuple[str, str]] = []
    size = 0
    while size < target_bytes:
        user = _user_turn(rng)
        if rng.random() < 0.3:
            user += " " + _user_turn(rng)
        if rng.random() < 0.3:
            user += " Also: " + sentences[rng.randrange(len(sentences))]
        assistant_parts = []
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(sentences))
            while i in used:
                i = (i + 1) % len(sentences)
            used.add(i)
            assistant_parts.append(sentences[i])
        assistant = " ".join(assistant_parts)
        turns += [("user", user), ("assistant", assistant)]
        size += len(user) + len(assistant) + 24
    return turns


def make_chat(rng: random.Random, target_bytes: int, fmt: str = "text") -> str:
    """A chat transcript of about ``target_bytes``: ``user: …\\nassistant: …`` lines, or an
    OpenAI-style JSON message list (``fmt="json"``)."""
    turns = chat_turns(rng, target_bytes)
    if fmt == "json":
        return json.dumps([{"role": r, "content": t} for r, t in turns])
    return "\n".join(f"{r}: {t}" for r, t in turns) + "\n"


def chat_size(rng: random.Random) -> int:
    """Session sizes for ingestion/processing: log-uniform 1-8 KB (median ~2.8 KB)."""
    return int(1024 * 2 ** rng.uniform(0, 3))


# --------------------------------------------------------------------------------------------
# Facts about the machine and the software
# --------------------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_facts(redis_client: Any | None = None) -> dict[str, Any]:
    from importlib import metadata

    cpu = re.search(r"model name\s*:\s*(.+)", _read("/proc/cpuinfo"))
    mem = re.search(r"MemTotal:\s*(\d+) kB", _read("/proc/meminfo"))
    os_name = re.search(r'PRETTY_NAME="?([^"\n]+)', _read("/etc/os-release"))
    packages = {}
    for name in (
        "memproc",
        "redis",
        "openai",
        "pydantic",
        "pydantic-settings",
        "aws-lambda-powertools",
        "httpx",
        "matplotlib",
        "numpy",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
    facts: dict[str, Any] = {
        "cpu_model": cpu.group(1).strip() if cpu else platform.processor(),
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
        "os": f"{os_name.group(1) if os_name else platform.system()} (kernel {platform.release()})",
        "python": platform.python_version(),
        "packages": packages,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_paths": len(dirty),
    }
    if redis_client is not None:
        info = redis_client.info("server")
        facts["redis"] = f"{info['redis_version']} ({info.get('redis_mode', '')}, {info.get('os', '')})"
    return facts


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


if __name__ == "__main__" and "--fake-llm" in sys.argv:
    _fake_llm_main()

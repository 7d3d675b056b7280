"""Key names have one source: `memproc.keys`, which also generates the Lua library's key builders."""

from __future__ import annotations

import re
from importlib import resources

import pytest
import redis

from memproc import keys
from memproc.dal.functions import LIBRARY, SOURCES

LUA = {name: resources.files("memproc.dal").joinpath("lua", name).read_text() for name in SOURCES}
# Lua string literals, without the comments around them.
_LITERAL = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


def _literals(source: str) -> list[str]:
    code = "\n".join(line.split("--", 1)[0] for line in source.splitlines())
    return [a or b for a, b in _LITERAL.findall(code)]


@pytest.mark.parametrize("name", SOURCES)
def test_the_lua_sources_spell_no_key_name(name: str) -> None:
    suffixes = {s.rstrip(":") for s in keys.VECTORSTORE_KEYS.values()}
    for literal in _literals(LUA[name]):
        assert literal not in keys.GLOBAL_KEYS.values(), literal
        assert not literal.startswith(keys.MEMORY_PREFIX), literal
        assert not literal.startswith(keys.PROCESSING_STATS_PREFIX), literal
        # A per-vectorstore key is "{<vs>}:<suffix>"; JSON's "{}" is the only brace allowed.
        assert literal == "{}" or "{" not in literal, literal
        assert not any(literal.startswith(":" + s) for s in suffixes), literal


@pytest.mark.parametrize("name", SOURCES)
def test_every_key_builder_the_lua_uses_exists(name: str) -> None:
    used = set(re.findall(r"\bk\.(\w+)\(", LUA[name])) | set(re.findall(r"\bk\[(\w+)\]", LUA[name]))
    assert used - {"name"} <= {*keys.VECTORSTORE_KEYS, "mem"}  # k.mem: a memory's Query-Engine hash


def test_the_generated_builders_spell_the_python_keys(r: redis.Redis) -> None:
    """Evaluate the header's builders in Redis' own Lua and compare with VectorstoreKeys."""
    vk = keys.VectorstoreKeys("user.1")
    script = keys.lua_header() + "local out = {}\n"
    for name, suffix in keys.VECTORSTORE_KEYS.items():
        call = f"k.{name}('user.1', 'x')" if suffix.endswith(":") else f"k.{name}('user.1')"
        script += f"out[#out + 1] = {call}\n"
    script += "out[#out + 1] = table.concat({split_raw(k.raw('user.1', 'abc'))}, '|')\n"
    script += "out[#out + 1] = k.mem('user.1', 'm-1')\n"
    script += "return out\n"
    expected = [
        getattr(vk, name)("x") if suffix.endswith(":") else getattr(vk, name)
        for name, suffix in keys.VECTORSTORE_KEYS.items()
    ]
    assert r.eval(script, 0) == [*expected, "user.1|abc", vk.memory("m-1")]
    assert LIBRARY.startswith("#!lua name=memproc_")

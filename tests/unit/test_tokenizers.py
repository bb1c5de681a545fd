"""ledgergate.shared.tokenizers: offline loading, integrity, model mapping and the counts budgets are charged with.

The reference throughout is tiktoken itself: its own `openai_public` constructors and its own
`load_tiktoken_bpe` (hash check included), pointed at local copies of the rank files instead of the
blob store, so no test needs the network.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from tiktoken import model as tiktoken_model
from tiktoken_ext import openai_public

from ledgergate.shared import tokenizers
from ledgergate.shared.errors import TokenizerError, TokenizerIntegrityError, UnknownModelError
from ledgergate.shared.tokenizers import (
    ACCOUNTING_ENCODING,
    EXPECTED_SHA256,
    REPLY_PRIMING_TOKENS,
    SHIPPED_ENCODINGS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    TOOLS_OVERHEAD_TOKENS,
    count_chat,
    count_text,
    count_tools,
    decode_rank_file,
    encoding_for_model,
    encoding_name_for_model,
    get_encoding,
    parse_tiktoken_bpe,
    rank_file_path,
    verify_rank_bytes,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _published_url(name: str) -> str:
    return f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


SAMPLES = [
    "",
    "hello world",
    "tiktoken is great!",
    "  leading and trailing whitespace \n\n\t",
    "Ünïcödé — naïve café, 日本語のテキスト, 한국어, emoji 🎉👩‍👩‍👧 and ∑ math",
    "お誕生日おめでとう",
    "<|endoftext|>",
    "before <|endoftext|> after <|endofprompt|> <|fim_prefix|>",
    "def f(x):\n    return {'a': [1, 2, 3]}  # 12345678901234567890\r\n",
    "I'm sure they'll've DONE it; WE'RE ready. 3.14159 and 1,000,000",
]

# The cookbook's example conversation and the prompt_tokens the OpenAI API reported for it
# ("How to count tokens with tiktoken", section 6).
COOKBOOK_MESSAGES: list[dict[str, str]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]
COOKBOOK_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOL_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.fixture(scope="module")
def tiktoken_specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """What tiktoken's own constructors return, with their download redirected to local files.

    The real `load_tiktoken_bpe` runs (with a cache dir, so its hash check is applied to the
    uncompressed bytes); only the URL it is given is swapped. An unexpected URL fails the lookup.
    """
    tmp = tmp_path_factory.mktemp("ranks")
    local: dict[str, str] = {}
    for name in SHIPPED_ENCODINGS:
        path = tmp / f"{name}.tiktoken"
        path.write_bytes(gzip.decompress(rank_file_path(name).read_bytes()))
        local[_published_url(name)] = str(path)
    real_load = openai_public.load_tiktoken_bpe
    hashes: dict[str, str | None] = {}

    def load_local(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        hashes[url] = expected_hash
        return real_load(local[url], expected_hash=expected_hash)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(tmp / "cache"))
        mp.setattr(openai_public, "load_tiktoken_bpe", load_local)
        specs = {name: openai_public.ENCODING_CONSTRUCTORS[name]() for name in SHIPPED_ENCODINGS}
    for name, spec in specs.items():
        spec["published_hash"] = hashes[_published_url(name)]
    return specs


@pytest.fixture(scope="module")
def reference(tiktoken_specs: dict[str, dict[str, Any]]) -> dict[str, tiktoken.Encoding]:
    return {
        name: tiktoken.Encoding(
            spec["name"],
            pat_str=spec["pat_str"],
            mergeable_ranks=spec["mergeable_ranks"],
            special_tokens=spec["special_tokens"],
        )
        for name, spec in tiktoken_specs.items()
    }


# --- integrity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED_ENCODINGS)
def test_shipped_rank_files_match_published_hash_of_uncompressed_bytes(name: str) -> None:
    gz_data = rank_file_path(name).read_bytes()
    verify_rank_bytes(name, gzip.decompress(gz_data))
    # The published hash is over the plain .tiktoken file, not over the gzip container.
    assert hashlib.sha256(gz_data).hexdigest() != EXPECTED_SHA256[name]


@pytest.mark.parametrize("name", SHIPPED_ENCODINGS)
def test_expected_hashes_are_the_ones_tiktoken_publishes(
    name: str, tiktoken_specs: dict[str, dict[str, Any]]
) -> None:
    assert tiktoken_specs[name]["published_hash"] == EXPECTED_SHA256[name]


@pytest.mark.parametrize("name", SHIPPED_ENCODINGS)
def test_corrupted_rank_bytes_are_refused(name: str) -> None:
    data = bytearray(gzip.decompress(rank_file_path(name).read_bytes()))
    data[len(data) // 2] ^= 0x01
    with pytest.raises(TokenizerIntegrityError, match=name):
        verify_rank_bytes(name, bytes(data))
    with pytest.raises(TokenizerIntegrityError):
        decode_rank_file(name, gzip.compress(bytes(data)))
    with pytest.raises(TokenizerIntegrityError):
        verify_rank_bytes(name, bytes(data[:-1]))
    with pytest.raises(TokenizerIntegrityError, match="gzip"):
        decode_rank_file(name, b"definitely not gzip")


def test_verify_rejects_unknown_encoding_name() -> None:
    with pytest.raises(TokenizerError, match="p50k_base"):
        verify_rank_bytes("p50k_base", b"")


def test_parse_error_is_a_tokenizer_error() -> None:
    assert parse_tiktoken_bpe(b"IQ== 0\n\nIg== 1\n") == {b"!": 0, b'"': 1}
    with pytest.raises(TokenizerError):
        parse_tiktoken_bpe(b"IQ== zero\n")


# --- equivalence with tiktoken -------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED_ENCODINGS)
def test_construction_matches_tiktoken_openai_public(
    name: str, tiktoken_specs: dict[str, dict[str, Any]]
) -> None:
    spec = tiktoken_specs[name]
    ours = get_encoding(name)
    assert ours.name == spec["name"]
    assert ours._pat_str == spec["pat_str"]
    assert ours._special_tokens == spec["special_tokens"]
    assert decode_rank_file(name, rank_file_path(name).read_bytes()) == spec["mergeable_ranks"]


@pytest.mark.parametrize("name", SHIPPED_ENCODINGS)
@pytest.mark.parametrize("text", SAMPLES)
def test_counts_and_tokens_equal_tiktoken(
    name: str, text: str, reference: dict[str, tiktoken.Encoding]
) -> None:
    expected = reference[name].encode_ordinary(text)
    assert get_encoding(name).encode_ordinary(text) == expected
    assert count_text(text, name) == len(expected)
    assert count_text(text, get_encoding(name)) == len(expected)


@pytest.mark.parametrize("name", SHIPPED_ENCODINGS)
def test_special_token_text_is_counted_as_text(name: str, reference: dict[str, tiktoken.Encoding]) -> None:
    with pytest.raises(ValueError):
        reference[name].encode("<|endoftext|>")  # what plain `encode` would do to a user's prompt
    assert count_text("<|endoftext|>", name) > 1  # one special token if it were treated as special


@pytest.mark.parametrize(
    ("name", "text", "ids"),
    [  # token ids printed in the OpenAI cookbook, an independent pin on the rank files
        ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
        ("cl100k_base", "お誕生日おめでとう", [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699]),
        ("o200k_base", "お誕生日おめでとう", [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669]),
    ],
)
def test_cookbook_token_ids(name: str, text: str, ids: list[int]) -> None:
    assert get_encoding(name).encode_ordinary(text) == ids


def test_encodings_are_built_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_encoding(ACCOUNTING_ENCODING) is get_encoding(ACCOUNTING_ENCODING)
    monkeypatch.setattr(tokenizers, "_encodings", {})
    builds: list[str] = []
    real_build: Callable[[str], tiktoken.Encoding] = tokenizers._build_encoding

    def counting_build(name: str) -> tiktoken.Encoding:
        builds.append(name)
        return real_build(name)

    monkeypatch.setattr(tokenizers, "_build_encoding", counting_build)
    barrier = threading.Barrier(8)
    results: list[tiktoken.Encoding] = []

    def worker() -> None:
        barrier.wait()
        results.append(get_encoding("cl100k_base"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert builds == ["cl100k_base"]
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_unknown_encoding_name_is_a_tokenizer_error() -> None:
    with pytest.raises(TokenizerError, match="r50k_base"):
        get_encoding("r50k_base")
    with pytest.raises(TokenizerError):
        count_text("x", "nope")


# --- model mapping -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
        ("gpt-oss-120b", "o200k_base"),  # o200k_harmony: same ordinary counts as o200k_base
    ],
)
def test_known_models(model: str, expected: str) -> None:
    assert encoding_name_for_model(model) == expected
    assert encoding_for_model(model) is get_encoding(expected)


def test_prefix_model_is_resolved_by_prefix() -> None:
    assert "gpt-4o-mini-2024-07-18" not in tiktoken_model.MODEL_TO_ENCODING
    assert encoding_name_for_model("gpt-4o-mini-2024-07-18") == "o200k_base"


def test_agrees_with_tiktoken_on_every_shipped_table_entry() -> None:
    names = list(tiktoken_model.MODEL_TO_ENCODING) + [
        prefix + "x" for prefix in tiktoken_model.MODEL_PREFIX_TO_ENCODING
    ]
    checked = 0
    for model in names:
        theirs = tiktoken_model.encoding_name_for_model(model)
        if theirs in SHIPPED_ENCODINGS:
            assert encoding_name_for_model(model) == theirs, model
            checked += 1
    assert checked > 20


@pytest.mark.parametrize("model", ["claude-3-5-sonnet-20241022", "llama-3.1-70b", "text-davinci-003", ""])
def test_unknown_model_raises_unless_fallback(model: str) -> None:
    with pytest.raises(UnknownModelError) as excinfo:
        encoding_for_model(model)
    assert repr(model) in excinfo.value.message
    assert all(name in excinfo.value.message for name in SHIPPED_ENCODINGS)
    assert encoding_name_for_model(model, fallback="cl100k_base") == "cl100k_base"
    assert encoding_for_model(model, fallback=ACCOUNTING_ENCODING) is get_encoding(ACCOUNTING_ENCODING)


def test_fallback_does_not_override_a_known_model() -> None:
    assert encoding_name_for_model("gpt-4", fallback="o200k_base") == "cl100k_base"


def test_unknown_fallback_encoding_is_a_configuration_error() -> None:
    for model in ("gpt-4o", "claude-3-opus"):
        with pytest.raises(TokenizerError) as excinfo:
            encoding_for_model(model, fallback="p50k_base")
        assert not isinstance(excinfo.value, UnknownModelError)


# --- chat ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "api_prompt_tokens"),
    [("gpt-4o", 124), ("gpt-4o-mini", 124), ("gpt-4", 129), ("gpt-4-0613", 129), ("gpt-3.5-turbo", 129)],
)
def test_chat_matches_cookbook_reference_figures(model: str, api_prompt_tokens: int) -> None:
    assert count_chat(COOKBOOK_MESSAGES, model) == api_prompt_tokens


@pytest.mark.parametrize("name", SHIPPED_ENCODINGS)
def test_chat_equals_independent_formula(name: str, reference: dict[str, tiktoken.Encoding]) -> None:
    enc = reference[name]
    messages = [
        *COOKBOOK_MESSAGES,
        {"role": "user", "name": "mallory", "content": "ignore <|endoftext|> this 🎉"},
        {"role": "assistant", "content": ""},
    ]
    expected = REPLY_PRIMING_TOKENS
    for message in messages:
        expected += TOKENS_PER_MESSAGE
        expected += sum(len(enc.encode_ordinary(value)) for value in message.values())
        expected += TOKENS_PER_NAME if "name" in message else 0
    assert count_chat(messages, "unused-model-name", encoding=name) == expected
    assert count_chat(messages, "unused-model-name", encoding=get_encoding(name)) == expected


def test_chat_unknown_model_needs_an_encoding() -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(UnknownModelError):
        count_chat(messages, "claude-3-opus")
    fallback = encoding_for_model("claude-3-opus", fallback=ACCOUNTING_ENCODING)
    assert count_chat(messages, "claude-3-opus", encoding=fallback) == count_chat(messages, "gpt-4o")


def test_chat_refuses_non_text_content() -> None:
    with pytest.raises(TokenizerError, match="content"):
        count_chat([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "gpt-4o")  # type: ignore[list-item]
    assert count_chat([{"role": "assistant", "content": None}], "gpt-4o") == count_chat(
        [{"role": "assistant"}], "gpt-4o"
    )


@pytest.mark.parametrize(("model", "api_prompt_tokens"), [("gpt-4o", 101), ("gpt-4", 105)])
def test_chat_with_tools(model: str, api_prompt_tokens: int, reference: dict[str, tiktoken.Encoding]) -> None:
    enc = reference[encoding_name_for_model(model)]
    payload = json.dumps(COOKBOOK_TOOLS, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    without = count_chat(COOKBOOK_TOOL_MESSAGES, model)
    with_tools = count_chat(COOKBOOK_TOOL_MESSAGES, model, tools=COOKBOOK_TOOLS)
    assert with_tools == without + TOOLS_OVERHEAD_TOKENS + len(enc.encode_ordinary(payload))
    # A deliberate over-estimate of what the API billed: the safe side for a budget gate.
    assert with_tools >= api_prompt_tokens
    reordered = [json.loads(json.dumps(tool, sort_keys=True)) for tool in COOKBOOK_TOOLS]
    assert reordered == COOKBOOK_TOOLS and list(reordered[0]) != list(COOKBOOK_TOOLS[0])
    assert count_tools(reordered, enc) == count_tools(COOKBOOK_TOOLS, enc)
    assert count_chat(COOKBOOK_TOOL_MESSAGES, model, tools=[]) == without


def test_unserialisable_tools_are_a_tokenizer_error() -> None:
    with pytest.raises(TokenizerError, match="JSON"):
        count_tools([{"type": "function", "function": {"default": object()}}], ACCOUNTING_ENCODING)


# --- offline -------------------------------------------------------------------------------------

_OFFLINE_SCRIPT = r"""
import json, os, socket

attempts = []

def refuse(*args, **kwargs):
    attempts.append(repr(args)[:200])
    raise OSError("network disabled by test")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

from ledgergate.shared import tokenizers

counts = {
    name: tokenizers.count_text("offline <|endoftext|> 日本語 🎉", tokenizers.get_encoding(name))
    for name in tokenizers.SHIPPED_ENCODINGS
}
counts["chat"] = tokenizers.count_chat([{"role": "user", "content": "hi"}], "gpt-4o")
counts["chat_cl100k"] = tokenizers.count_chat([{"role": "user", "content": "hi"}], "gpt-4")
assert attempts == [], attempts
assert os.listdir(os.environ["TIKTOKEN_CACHE_DIR"]) == []

# Control: stock tiktoken, same process, would have gone to the network (and been stopped).
import tiktoken
try:
    tiktoken.get_encoding("r50k_base")
except Exception:
    pass
counts["stock_tiktoken_attempted_network"] = bool(attempts)
print(json.dumps(counts))
"""


def test_counting_works_with_the_network_unreachable(tmp_path: Path) -> None:
    cache_dir = tmp_path / "tiktoken-cache"
    cache_dir.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "DATA_GYM_CACHE_DIR"}
    env["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    text = "offline <|endoftext|> 日本語 🎉"
    for name in SHIPPED_ENCODINGS:
        assert counts[name] == count_text(text, name)
    assert counts["chat"] == count_chat([{"role": "user", "content": "hi"}], "gpt-4o")
    assert counts["chat_cl100k"] == count_chat([{"role": "user", "content": "hi"}], "gpt-4")
    assert counts["stock_tiktoken_attempted_network"] is True

"""Drives the gateway's /v1/messages with the official Anthropic Python SDK where the handle's
target is an Anthropic endpoint, passed through as it is.

Run by tests/anthropic_sdk.rs with the gateway's base URL:
    python3 anthropic_native_compat.py http://127.0.0.1:PORT
Handles: `claude` on the test Anthropic server (which answers "<model> heard: <last user
text>"), `claude-or-local` on a dead Anthropic endpoint first and the plain chat test upstream
("tok0 tok1 tok2 ") second.
Exits non-zero, naming the check, when the SDK sees anything it should not.
"""
import sys

import anthropic


def main() -> int:
    client = anthropic.Anthropic(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=30)
    hi = [{"role": "user", "content": "hi there"}]

    m = client.messages.create(model="claude", max_tokens=50, messages=hi)
    assert m.id == "msg_native_1" and m.model == "claude-sonnet-4-5", f"native: {m}"
    assert m.content[0].text == "claude-sonnet-4-5 heard: hi there", f"native text: {m.content}"

    with client.messages.stream(model="claude", max_tokens=50, messages=hi) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "claude-sonnet-4-5 heard: hi there", f"native stream: {text!r}"
    assert final.usage.output_tokens == 4 and final.stop_reason == "end_turn", f"native final: {final}"

    # A built-in tool only Anthropic runs: passed on to the Anthropic endpoint.
    w = client.messages.create(
        model="claude",
        max_tokens=50,
        messages=[{"role": "user", "content": "news"}],
        tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 1}],
    )
    assert w.content[0].text == "claude-sonnet-4-5 heard: news", f"built-in tool: {w}"

    # The Anthropic endpoint is down: the chat fallback answers, translated.
    f = client.messages.create(model="claude-or-local", max_tokens=50, messages=hi)
    assert f.content[0].text == "tok0 tok1 tok2 " and f.model == "claude-or-local", f"fallback: {f}"

    # The same built-in tool where only a chat target is left: refused by name.
    try:
        client.messages.create(
            model="local",
            max_tokens=50,
            messages=[{"role": "user", "content": "news"}],
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )
        raise AssertionError("a built-in tool was accepted for a chat-only handle")
    except anthropic.BadRequestError as err:
        assert "web_search" in err.message, f"built-in on chat: {err}"

    print("anthropic native: 5 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

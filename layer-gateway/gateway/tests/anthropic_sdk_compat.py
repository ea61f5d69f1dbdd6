"""Drives the gateway's Anthropic Messages route with the official Anthropic Python SDK.

Run by tests/anthropic_sdk.rs with the gateway's base URL and a valid key:
    python3 anthropic_sdk_compat.py http://127.0.0.1:PORT sk-...
The handle `chat` is the plain test upstream ("tok0 tok1 tok2 "); `tools` is scripted: a
get_weather call, then "It is sunny.", then the same call streamed.
Exits non-zero, naming the check, when the SDK sees anything it should not.
"""
import sys

import anthropic


WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def main() -> int:
    base_url, key = sys.argv[1], sys.argv[2]
    client = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0, timeout=30)
    hi = [{"role": "user", "content": "hi"}]

    m = client.messages.create(model="chat", max_tokens=50, system="Be brief.", messages=hi)
    assert m.type == "message" and m.role == "assistant" and m.model == "chat", f"plain: {m}"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == "tok0 tok1 tok2 ", f"plain: {m}"
    assert m.stop_reason == "end_turn", f"plain stop: {m.stop_reason}"
    assert m.usage.input_tokens == 7 and m.usage.output_tokens == 3, f"plain usage: {m.usage}"

    with client.messages.stream(model="chat", max_tokens=50, messages=hi) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "tok0 tok1 tok2 ", f"stream text: {text!r}"
    assert final.content[0].text == text and final.stop_reason == "end_turn", f"stream final: {final}"
    assert final.usage.output_tokens == 3, f"stream usage: {final.usage}"

    ask = [{"role": "user", "content": "Weather in Paris?"}]
    t = client.messages.create(model="tools", max_tokens=50, tools=[WEATHER], messages=ask)
    assert t.stop_reason == "tool_use", f"tool stop: {t}"
    use = [b for b in t.content if b.type == "tool_use"]
    assert len(use) == 1 and use[0].name == "get_weather" and use[0].input == {"city": "Paris"}, f"tool use: {t}"
    done = client.messages.create(
        model="tools",
        max_tokens=50,
        tools=[WEATHER],
        messages=ask
        + [
            {"role": "assistant", "content": t.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use[0].id, "content": "sunny, 21 C"}]},
        ],
    )
    assert done.content[0].text == "It is sunny." and done.stop_reason == "end_turn", f"tool answer: {done}"

    with client.messages.stream(model="tools", max_tokens=50, tools=[WEATHER], messages=ask) as s:
        streamed = s.get_final_message()
    suse = [b for b in streamed.content if b.type == "tool_use"]
    assert streamed.stop_reason == "tool_use" and suse and suse[0].input == {"city": "Paris"}, f"streamed tool use: {streamed}"

    n = client.messages.count_tokens(model="chat", messages=hi)
    assert n.input_tokens == 7, f"count_tokens: {n}"

    try:
        client.messages.create(model="no-such-handle", max_tokens=5, messages=hi)
        raise AssertionError("unknown model accepted")
    except anthropic.NotFoundError as err:
        assert err.status_code == 404 and err.body["error"]["type"] == "not_found_error", f"not found: {err.body}"

    try:
        client.messages.create(model="chat", max_tokens=5, messages=hi, tools=[{"type": "web_search_20250305", "name": "web_search"}])
        raise AssertionError("a built-in tool accepted")
    except anthropic.BadRequestError as err:
        assert "web_search (web_search_20250305)" in err.body["error"]["message"], f"built-in: {err.body}"

    bad = anthropic.Anthropic(base_url=base_url, api_key="sk-wrong", max_retries=0)
    try:
        bad.messages.create(model="chat", max_tokens=5, messages=hi)
        raise AssertionError("bad key accepted")
    except anthropic.AuthenticationError as err:
        assert err.status_code == 401 and err.body["error"]["type"] == "authentication_error", f"auth: {err.body}"

    print("anthropic sdk: 9 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Drives the gateway with the official OpenAI Python SDK.

Run by tests/openai_sdk.rs with the gateway's base URL and a valid key:
    python3 openai_sdk_compat.py http://127.0.0.1:PORT/v1 sk-...
Exits non-zero, naming the check, when the SDK sees anything it should not.
"""
import sys

import openai


def main() -> int:
    base_url, key = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)

    ids = [m.id for m in client.models.list()]
    assert ids == ["chat", "embed"], f"models.list: {ids}"

    r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "tok0 tok1 tok2 ", f"chat: {r}"
    assert r.usage.total_tokens == 10, f"chat usage: {r.usage}"

    text, usage = "", None
    for chunk in client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "tok0 tok1 tok2 ", f"stream text: {text!r}"
    assert usage is not None and usage.completion_tokens == 3, f"stream usage: {usage}"

    e = client.embeddings.create(model="embed", input=["a", "b"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 2, f"embeddings: {e}"

    try:
        client.chat.completions.create(model="no-such-handle", messages=[])
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as err:
        assert err.status_code == 404 and err.code == "model_not_found", f"not found: {err}"

    bad = openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0)
    try:
        bad.models.list()
        raise AssertionError("bad key accepted")
    except openai.AuthenticationError as err:
        assert err.status_code == 401, f"auth: {err}"

    print("openai sdk: 6 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Drives the gateway's audio and image routes with the official OpenAI Python SDK.

Run by tests/media.rs with the gateway's base URL and a valid key:
    python3 media_sdk_compat.py http://127.0.0.1:PORT/v1 sk-...
Handles: `whisper`, `tts` and `img` on the test speech/image server (which answers with what
it received), `chat` on a chat-only server.
Exits non-zero, naming the check, when the SDK sees anything it should not.
"""
import base64
import sys

import openai

AUDIO_BYTES = 3 * 1024 * 1024 + 17


def audio(n: int) -> bytes:
    return bytes((i * 7) % 256 for i in range(n))


def main() -> int:
    base_url, key = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
    talk = audio(AUDIO_BYTES)

    t = client.audio.transcriptions.create(model="whisper", file=("talk.wav", talk, "audio/wav"), language="fr")
    assert t.text.startswith(f"{AUDIO_BYTES} bytes of talk.wav ("), f"transcription: {t.text}"
    assert t.text.endswith("heard by Systran/faster-whisper-small"), f"transcription model: {t.text}"

    tr = client.audio.translations.create(model="whisper", file=("short.wav", talk[:1000], "audio/wav"))
    assert tr.text.startswith("1000 bytes of short.wav ("), f"translation: {tr.text}"

    plain = client.audio.transcriptions.create(
        model="whisper", file=("short.wav", talk[:10], "audio/wav"), response_format="text"
    )
    assert isinstance(plain, str) and plain.startswith("10 bytes of short.wav"), f"text format: {plain!r}"

    with client.audio.speech.with_streaming_response.create(
        model="tts", voice="alloy", input="Hello there", response_format="wav"
    ) as r:
        assert r.headers["content-type"] == "audio/wav", f"speech type: {r.headers}"
        got = b"".join(r.iter_bytes(chunk_size=8192))
    want = bytes((i * 31) % 251 for i in range(len("Hello there") * 4096))
    assert got == want, f"speech: {len(got)} bytes, {len(want)} expected"

    img = client.images.generate(model="img", prompt="a red fox", n=2, response_format="b64_json")
    assert len(img.data) == 2 and base64.b64decode(img.data[1].b64_json) == b"image 1 of a red fox", f"images: {img}"

    try:
        client.audio.transcriptions.create(model="chat", file=("short.wav", talk[:10], "audio/wav"))
        raise AssertionError("a chat-only handle was sent audio")
    except openai.BadRequestError as err:
        assert "does not offer transcriptions" in err.message, f"not offered: {err}"

    try:
        client.audio.speech.create(model="no-such-handle", voice="alloy", input="hi")
        raise AssertionError("an unknown handle answered")
    except openai.NotFoundError as err:
        assert "no-such-handle" in err.message, f"unknown handle: {err}"

    print("media sdk: 7 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Drives the gateway's Responses API with the official OpenAI Python SDK.

Run by tests/responses_sdk.rs with the gateway's base URL and a valid key:
    python3 responses_sdk_compat.py http://127.0.0.1:PORT/v1 sk-...
The handle `chat` is the plain test upstream ("tok0 tok1 tok2 "); `tools` is scripted: a
get_weather call, then "It is sunny.", then the same call streamed.
Exits non-zero, naming the check, when the SDK sees anything it should not.
"""
import json
import sys

import openai

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def main() -> int:
    base_url, key = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)

    r = client.responses.create(model="chat", input="hi", instructions="Be brief.")
    assert r.object == "response" and r.status == "completed" and r.model == "chat", f"plain: {r}"
    assert r.output_text == "tok0 tok1 tok2 ", f"plain text: {r.output_text!r}"
    assert r.usage.input_tokens == 7 and r.usage.output_tokens == 3 and r.usage.total_tokens == 10, f"usage: {r.usage}"
    assert r.store is False, f"store defaults to false: {r.store}"

    events = list(client.responses.create(model="chat", input="hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", f"stream kinds: {kinds}"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "tok0 tok1 tok2 ", f"stream text: {text!r}"
    done = events[-1].response
    assert done.output_text == text and done.usage.output_tokens == 3, f"completed: {done}"
    assert [e.sequence_number for e in events] == list(range(len(events))), "sequence numbers"

    first = client.responses.create(model="tools", input="Weather in Paris?", tools=[WEATHER], store=True)
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather", f"call: {first.output}"
    assert json.loads(call.arguments) == {"city": "Paris"}, f"arguments: {call.arguments}"
    second = client.responses.create(
        model="tools",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
        tools=[WEATHER],
    )
    assert second.output_text == "It is sunny." and second.previous_response_id == first.id, f"round trip: {second}"

    again = client.responses.retrieve(first.id)
    assert again.id == first.id and again.output[0].call_id == call.call_id, f"retrieve: {again}"
    try:
        client.responses.retrieve(second.id)
        raise AssertionError("a response not stored was retrieved")
    except openai.NotFoundError as err:
        assert second.id in err.message, f"retrieve unknown: {err}"

    streamed = list(client.responses.create(model="tools", input="Weather in Paris?", tools=[WEATHER], stream=True))
    args = "".join(e.delta for e in streamed if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == {"city": "Paris"}, f"streamed arguments: {args!r}"
    final = streamed[-1].response.output[0]
    assert final.type == "function_call" and json.loads(final.arguments) == {"city": "Paris"}, f"streamed call: {final}"

    try:
        client.responses.create(model="chat", input="hi", previous_response_id="resp_unknown")
        raise AssertionError("an unknown previous response accepted")
    except openai.BadRequestError as err:
        assert "resp_unknown" in err.message, f"unknown previous: {err}"

    try:
        client.responses.create(model="chat", input="hi", tools=[{"type": "web_search_preview"}])
        raise AssertionError("a built-in tool accepted")
    except openai.BadRequestError as err:
        assert "web_search_preview" in err.message, f"built-in: {err}"

    kept = client.responses.create(model="chat", input="hi", store=True)
    client.responses.delete(kept.id)
    for what in ("retrieve", "delete"):
        try:
            getattr(client.responses, what)(kept.id)
            raise AssertionError(f"a deleted response answered {what}")
        except openai.NotFoundError as err:
            assert kept.id in err.message, f"{what} after delete: {err}"

    place = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    shaped = client.responses.create(
        model="chat",
        input="Where is the Louvre?",
        text={"format": {"type": "json_schema", "name": "place", "schema": place, "strict": True}},
    )
    assert shaped.text.format.type == "json_schema" and shaped.text.format.name == "place", f"text.format: {shaped.text}"

    print("responses sdk: 11 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

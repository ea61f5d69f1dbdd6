"""The official OpenAI Python SDK against `tiny-agents serve`: the agents in the model list,
a plain answer with the tool activity in `reasoning_content`, a stream, and an unknown agent
as the SDK's NotFoundError. Prints "N checks passed" or the failures (exit status 1)."""

import os
import sys

import openai

client = openai.OpenAI(base_url=os.environ["BASE_URL"], api_key=os.environ["API_KEY"], max_retries=0)
ask = [{"role": "user", "content": "What do bees make?"}]
failures = []
passed = 0


def check(name, ok, detail=""):
    global passed
    if ok:
        passed += 1
    else:
        failures.append(f"FAIL {name}: {detail}")


ids = [m.id for m in client.models.list()]
check("models", ids == ["agent:helper"], ids)

r = client.chat.completions.create(model="agent:helper", messages=ask)
msg = r.choices[0].message
check("answer", msg.content == "Bees make honey.", msg)
check("activity", "calling echo(" in (getattr(msg, "reasoning_content", None) or ""), msg)

content, reasoning = "", ""
for chunk in client.chat.completions.create(model="agent:helper", messages=ask, stream=True):
    if chunk.choices:
        d = chunk.choices[0].delta
        content += d.content or ""
        reasoning += getattr(d, "reasoning_content", None) or ""
check("stream", content == "Bees make honey." and "echo answered" in reasoning, (content, reasoning))

try:
    client.chat.completions.create(model="agent:nobody", messages=ask)
    check("unknown agent", False, "no error")
except openai.NotFoundError as e:
    check("unknown agent", e.body["code"] == "model_not_found", e.body)

if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"{passed} checks passed")

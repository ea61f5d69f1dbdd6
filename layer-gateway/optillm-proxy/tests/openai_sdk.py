"""The official OpenAI Python SDK against optillm-proxy: the approach picked by
`extra_body`, by a prefixed model and by a tag; a streamed answer with its progress; `n`;
errors as the SDK's exceptions. Prints "N passed, M failed"."""

import sys

import openai

base, = sys.argv[1:]
client = openai.OpenAI(base_url=base, api_key="sk-anything", max_retries=0)
ask = [{"role": "user", "content": "Q?"}]
passed, failed = 0, 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {name}: {detail}")


raw = client.chat.completions.with_raw_response.create(
    model="m", messages=ask, extra_body={"optillm_approach": "moa"}
)
r = raw.parse()
check("extra_body", r.choices[0].message.content == "final: 42", r)
check("header", raw.headers.get("x-optillm-approach") == "moa", raw.headers)
check("usage", r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0, r.usage)

r = client.chat.completions.create(model="moa-m", messages=ask)
check("prefix", r.choices[0].message.content == "final: 42" and r.model == "moa-m", r)

r = client.chat.completions.create(
    model="m",
    messages=[{"role": "system", "content": "<optillm_approach>moa</optillm_approach>"}] + ask,
)
check("tag", r.choices[0].message.content == "final: 42", r)

content, reasoning = "", ""
for chunk in client.chat.completions.create(model="moa-m", messages=ask, stream=True):
    if not chunk.choices:
        continue
    d = chunk.choices[0].delta
    content += d.content or ""
    reasoning += (d.model_extra or {}).get("reasoning_content") or ""
check("stream", content == "final: 42", content)
check("progress", "moa: 3 candidates" in reasoning, reasoning)

r = client.chat.completions.create(model="moa-m", messages=ask, n=2)
check("n", [c.index for c in r.choices] == [0, 1], r)

try:
    client.chat.completions.create(model="z3-m", messages=ask)
    check("refused", False, "no error")
except openai.BadRequestError as e:
    check("refused", "z3" in str(e) and e.status_code == 400, e)

print(f"{passed} passed, {failed} failed")

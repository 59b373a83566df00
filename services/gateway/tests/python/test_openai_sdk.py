"""The official `openai` package against the gateway, unchanged but for its base URL and
one of our API keys."""

import json
import time

import openai
import pytest

from conftest import LIMITED_KEY, MODEL, SPENT_KEY, client, requests_answered

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
        },
    },
}


def ask(text):
    return [{"role": "user", "content": text}]


def test_a_completion():
    answer = client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "be brief"}] + ask("hello from python"),
        temperature=0.2,
        max_tokens=50,
    )
    assert answer.id.startswith("chatcmpl-")
    assert answer.object == "chat.completion"
    assert answer.model == MODEL
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: hello from python"
    assert choice.finish_reason == "stop"
    usage = answer.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0


def test_a_stream_with_usage_last():
    chunks = list(
        client().chat.completions.create(
            model=MODEL,
            messages=ask("stream please"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "echo: stream please"
    finished = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finished == ["stop"]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens > 0


def test_a_tool_call_whole_and_streamed():
    answer = client().chat.completions.create(
        model=MODEL, messages=ask("weather in Paris?"), tools=[WEATHER]
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"echo": "weather in Paris?"}

    # The SDK's own stream helper puts the pieces back together.
    with client().chat.completions.stream(
        model=MODEL, messages=ask("weather in Rome?"), tools=[WEATHER]
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls[0]
    assert streamed.function.name == "get_weather"
    assert json.loads(streamed.function.arguments) == {"echo": "weather in Rome?"}

    # The result goes back, and the model answers in text.
    followed = client().chat.completions.create(
        model=MODEL,
        tools=[WEATHER],
        messages=ask("weather in Paris?")
        + [
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ],
    )
    assert followed.choices[0].message.content == "echo: weather in Paris?"


def test_the_models():
    ids = [model.id for model in client().models.list()]
    assert MODEL in ids
    assert client().models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client().models.retrieve("no-such-model")


def test_401_is_an_authentication_error():
    with pytest.raises(openai.AuthenticationError) as raised:
        client("sk-chat-not-a-real-key").chat.completions.create(model=MODEL, messages=ask("hi"))
    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"


def test_400_for_blocked_text_and_for_a_field_that_cannot_be_honoured():
    with pytest.raises(openai.BadRequestError) as raised:
        client().chat.completions.create(model=MODEL, messages=ask("tell me about foo"))
    assert raised.value.code == "content_filter"
    assert raised.value.param == "messages[0].content"

    with pytest.raises(openai.BadRequestError) as raised:
        client().chat.completions.create(model=MODEL, messages=ask("hi"), n=2)
    assert raised.value.param == "n"


def test_404_for_an_unknown_model():
    with pytest.raises(openai.NotFoundError) as raised:
        client().chat.completions.create(model="gpt-does-not-exist", messages=ask("hi"))
    assert raised.value.code == "model_not_found"
    assert raised.value.param == "model"


def test_429_when_rate_limited():
    limited = client(LIMITED_KEY, max_retries=0)
    limited.chat.completions.create(model=MODEL, messages=ask("one"))
    with pytest.raises(openai.RateLimitError) as raised:
        limited.chat.completions.create(model=MODEL, messages=ask("two"))
    assert raised.value.code == "rate_limit_exceeded"
    assert int(raised.value.response.headers["retry-after"]) > 0


def test_a_spent_quota_is_429_and_the_sdk_does_not_retry_it():
    before = requests_answered(429)
    started = time.monotonic()
    # The SDK's default: two retries of a 429, unless told not to.
    with pytest.raises(openai.RateLimitError) as raised:
        client(SPENT_KEY).chat.completions.create(model=MODEL, messages=ask("hi"))
    elapsed = time.monotonic() - started
    assert raised.value.code == "quota_exceeded"
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert int(raised.value.response.headers["retry-after"]) > 0
    assert requests_answered(429) - before == 1, "the gateway saw one request, not three"
    assert elapsed < 5, f"no retry backoff: {elapsed:.1f} s"

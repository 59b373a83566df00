"""`langchain-openai`'s ChatOpenAI against the gateway. With a custom base URL it does not
ask for stream usage by default: the gateway asks the provider itself, so the charge is
exact either way."""

import os

from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from conftest import BASE_URL, KEY, MODEL

os.environ.setdefault("LANGCHAIN_TRACING_V2", "false")


def chat(**options):
    return ChatOpenAI(model=MODEL, base_url=BASE_URL, api_key=KEY, **options)


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


def test_invoke():
    message = chat().invoke("hello langchain")
    assert message.content == "echo: hello langchain"
    assert message.usage_metadata["total_tokens"] > 0


def test_stream():
    chunks = list(chat().stream("stream langchain"))
    assert "".join(chunk.content for chunk in chunks) == "echo: stream langchain"


def test_stream_with_usage_when_asked():
    chunks = list(chat(stream_usage=True).stream("count me"))
    total = None
    for chunk in chunks:
        total = chunk if total is None else total + chunk
    assert total.content == "echo: count me"
    assert total.usage_metadata["total_tokens"] > 0


def test_a_tool_call():
    message = chat().bind_tools([get_weather]).invoke("weather in Oslo?")
    assert message.tool_calls[0]["name"] == "get_weather"
    assert message.tool_calls[0]["args"] == {"echo": "weather in Oslo?"}

"""What the Rust harness (services/gateway/tests/python_clients.rs) started and made:
the gateway's /v1 base URL, its metrics URL, the model, and one API key per kind of user.
"""

import os
import re
import urllib.request

import openai
import pytest


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run these through services/gateway/tests/python_clients.rs", 2)
    return value


BASE_URL = _env("CHAT_BASE_URL")
METRICS_URL = _env("CHAT_METRICS_URL")
MODEL = _env("CHAT_MODEL")
# An ordinary user; one allowed one chat a minute; one whose daily quota is spent.
KEY = _env("CHAT_API_KEY")
LIMITED_KEY = _env("CHAT_LIMITED_KEY")
SPENT_KEY = _env("CHAT_SPENT_KEY")


def client(key=KEY, **options):
    return openai.OpenAI(base_url=BASE_URL, api_key=key, **options)


def requests_answered(status):
    """How many POST /v1/chat/completions the gateway answered with `status`, from its
    own Prometheus counter."""
    with urllib.request.urlopen(METRICS_URL, timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("http_server_requests_total{")
            and 'route="/v1/chat/completions"' in line
            and f'status="{status}"' in line
        ):
            total += float(re.split(r"\s+", line.strip())[-1])
    return int(total)

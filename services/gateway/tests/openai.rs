//! The OpenAI-compatible API over the real stack (every service in-process, real Redis
//! and MariaDB, the provider a real local HTTP server speaking OpenAI's wire format):
//! the answer's shape, every request field honoured or refused by name, every error in
//! OpenAI's shape and status, streams with usage, tool calls, and exact settlement,
//! including for a client that leaves mid-stream.

mod support;

use std::time::Duration;

use chat_common::tokens;
use chat_testing::Upstream;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde_json::{Value, json};
use support::Stack;

const ADMIN: &str = "test-admin-key";
const COMPLETIONS: &str = "/v1/chat/completions";

/// A stack with authentication on, `gpt-test` configured and `gpt-other` allowed.
async fn stack() -> anyhow::Result<Stack> {
    stack_with(|_| {}).await
}

async fn stack_with(
    adjust: impl FnOnce(&mut chat_testing::stack::Settings),
) -> anyhow::Result<Stack> {
    Stack::start_with_auth(ADMIN, |settings| {
        settings.gateway.allowed_models = "gpt-other".to_owned();
        adjust(settings);
    })
    .await
}

/// Creates `user_id` with `limits` (`daily_limit`, `rate_limit_per_minute`) and a key.
async fn key_for(stack: &Stack, user_id: &str, limits: Value) -> anyhow::Result<String> {
    chat_testing::accounts::make_user_with(&stack.http, &stack.base, ADMIN, user_id, limits, "sdk")
        .await
}

/// POSTs a completion; answers the response.
async fn post(stack: &Stack, key: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
    Ok(stack
        .http
        .post(stack.url(COMPLETIONS))
        .bearer_auth(key)
        .json(body)
        .send()
        .await?)
}

/// POSTs a completion; answers the status and the JSON body.
async fn complete(stack: &Stack, key: &str, body: &Value) -> anyhow::Result<(StatusCode, Value)> {
    let response = post(stack, key, body).await?;
    let status = response.status();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).map_err(|_| anyhow::anyhow!("not JSON: {text}"))?;
    Ok((status, body))
}

fn ask(text: &str) -> Value {
    json!({"model": "gpt-test", "messages": [{"role": "user", "content": text}]})
}

async fn remaining(stack: &Stack, key: &str) -> anyhow::Result<i64> {
    let quota: Value = stack
        .http
        .get(stack.url("/quota"))
        .bearer_auth(key)
        .send()
        .await?
        .json()
        .await?;
    quota["remaining"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no remaining in {quota}"))
}

/// `remaining` once it is `expected` (settling after the client left runs on), or as
/// it is after about five seconds.
async fn remaining_becomes(stack: &Stack, key: &str, expected: i64) -> anyhow::Result<i64> {
    let mut left = remaining(stack, key).await?;
    for _ in 0..100 {
        if left == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = remaining(stack, key).await?;
    }
    Ok(left)
}

/// The caller's history once it holds `count` messages (work that finishes after the
/// client left saves in the background), or as it is after about five seconds. Tests
/// that end while a save may still be running wait for it here: a transaction cut off
/// mid-way would hold up dropping the test's database.
async fn history_with(stack: &Stack, key: &str, count: usize) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    for _ in 0..100 {
        let history: Value = stack
            .http
            .get(stack.url("/history"))
            .bearer_auth(key)
            .send()
            .await?
            .json()
            .await?;
        items = history.as_array().cloned().unwrap_or_default();
        if items.len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(items)
}

/// An OpenAI error body: its (type, code, param).
fn error_of(body: &Value) -> (String, String, String) {
    let text = |field: &str| body["error"][field].as_str().unwrap_or("null").to_owned();
    assert!(body["error"]["message"].is_string(), "{body}");
    (text("type"), text("code"), text("param"))
}

/// What the fake provider reports for a text reply to `messages`, as it counts it.
fn fake_usage(messages: &[&str], reply: &str) -> i64 {
    (tokens::count_prompt(messages.iter().copied()) + tokens::count(reply)) as i64
}

/// The `data:` payloads of an SSE body, in order.
fn data_lines(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

fn chunks(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter(|line| *line != "[DONE]")
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[tokio::test]
async fn a_completion_has_openai_shape_and_is_charged_what_the_provider_reported()
-> anyhow::Result<()> {
    let stack = stack().await?;
    let key = key_for(&stack, "ada", json!({})).await?;
    let limit = remaining(&stack, &key).await?;
    let body = json!({"model": "gpt-test", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "Hello   there"}
    ]});
    let response = post(&stack, &key, &body).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let conversation = response
        .headers()
        .get("x-conversation-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let answer: Value = response.json().await?;
    assert!(
        answer["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-"))
    );
    assert_eq!(answer["object"], "chat.completion");
    assert!(
        answer["created"]
            .as_u64()
            .is_some_and(|t| t > 1_700_000_000)
    );
    assert_eq!(answer["model"], "gpt-test");
    let choice = &answer["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    // The model gets the text as sent: the gateway neither cleans it nor adds context.
    assert_eq!(choice["message"]["content"], "echo: Hello   there");
    assert_eq!(choice["finish_reason"], "stop");
    let expected = fake_usage(&["be brief", "Hello   there"], "echo: Hello   there");
    assert_eq!(answer["usage"]["total_tokens"], expected);
    assert_eq!(
        answer["usage"]["total_tokens"],
        answer["usage"]["prompt_tokens"].as_i64().unwrap_or(0)
            + answer["usage"]["completion_tokens"].as_i64().unwrap_or(0)
    );
    let sent = &stack.provider.requests()[0];
    assert_eq!(
        sent["messages"].as_array().map(Vec::len),
        Some(2),
        "no context added"
    );
    assert_eq!(
        remaining(&stack, &key).await?,
        limit - expected,
        "settled exactly"
    );

    // The exchange is in the caller's history, in a conversation of its own.
    assert!(conversation.is_some_and(|id| !id.is_empty()));
    let history: Value = stack
        .http
        .get(stack.url("/history"))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    let texts: Vec<&str> = history
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["text"].as_str())
        .collect();
    assert_eq!(texts, ["Hello   there", "echo: Hello   there"]);
    Ok(())
}

#[tokio::test]
async fn every_field_reaches_the_provider_or_is_refused_by_name() -> anyhow::Result<()> {
    let stack = stack().await?;
    let key = key_for(&stack, "fields", json!({})).await?;
    let limit = remaining(&stack, &key).await?;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let body = json!({
        "model": "gpt-other",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "weather?"}], "name": "ann"}
        ],
        "temperature": 0.5, "top_p": 0.5, "max_tokens": 10_000, "stop": ["END"],
        "seed": 7, "presence_penalty": 0.5, "frequency_penalty": 0.25,
        "user": "end-user-1", "response_format": {"type": "text"},
        "tools": tools, "tool_choice": "none", "parallel_tool_calls": true,
        "n": 1, "logprobs": false, "stream": false, "metadata": {"k": "v"},
        "an_unknown_field": true
    });
    let (status, answer) = complete(&stack, &key, &body).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let sent = &stack.provider.requests()[0];
    assert_eq!(sent["model"], "gpt-other", "an allowed model is passed on");
    assert_eq!(
        sent["max_completion_tokens"], 100,
        "capped by MAX_OUTPUT_TOKENS"
    );
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["top_p"], 0.5);
    assert_eq!(sent["stop"], json!(["END"]));
    assert_eq!(sent["seed"], 7);
    assert_eq!(sent["presence_penalty"], 0.5);
    assert_eq!(sent["frequency_penalty"], 0.25);
    assert_eq!(sent["user"], "end-user-1", "the client's end user");
    assert_eq!(sent["response_format"], json!({"type": "text"}));
    assert_eq!(sent["tools"], tools);
    assert_eq!(sent["tool_choice"], "none");
    assert_eq!(sent["parallel_tool_calls"], true);
    assert_eq!(sent["messages"][0]["role"], "system", "developer is system");
    assert_eq!(sent["messages"][1]["content"], "weather?");
    assert_eq!(sent["messages"][1]["name"], "ann");
    for never in ["n", "logprobs", "metadata", "an_unknown_field"] {
        assert!(sent.get(never).is_none(), "{never} in {sent}");
    }
    // max_completion_tokens below the cap is kept.
    let mut small = ask("hi");
    small["max_completion_tokens"] = json!(12);
    assert_eq!(complete(&stack, &key, &small).await?.0, StatusCode::OK);
    assert_eq!(stack.provider.requests()[1]["max_completion_tokens"], 12);
    let spent = limit - remaining(&stack, &key).await?;

    let refused = [
        ("n", json!(2), "n"),
        ("logprobs", json!(true), "logprobs"),
        ("temperature", json!(5), "temperature"),
        ("max_tokens", json!(0), "max_tokens"),
        ("stop", json!(7), "stop"),
        ("tools", json!([{"type": "retrieval"}]), "tools[0]"),
        ("tool_choice", json!("always"), "tool_choice"),
        (
            "response_format",
            json!({"type": "yaml"}),
            "response_format",
        ),
        ("audio", json!({"voice": "alloy"}), "audio"),
        ("functions", json!([{"name": "f"}]), "functions"),
    ];
    for (field, value, param) in refused {
        let mut body = ask("hi");
        body[field] = value;
        let (status, error) = complete(&stack, &key, &body).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {error}");
        assert_eq!(
            error_of(&error),
            ("invalid_request_error".into(), "null".into(), param.into()),
            "{field}"
        );
    }
    let (status, error) = complete(
        &stack,
        &key,
        &json!({"model": "gpt-test", "messages": [{"role": "tool", "content": "x"}]}),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&error).2, "messages[0].tool_call_id");
    assert_eq!(
        stack.provider.requests().len(),
        2,
        "no refused request reached it"
    );
    assert_eq!(
        limit - remaining(&stack, &key).await?,
        spent,
        "nor cost anything"
    );
    Ok(())
}

#[tokio::test]
async fn models_are_listed_unknown_ones_are_404_and_no_v1_path_is_html() -> anyhow::Result<()> {
    let stack = stack().await?;
    let key = key_for(&stack, "lister", json!({})).await?;
    let get = |path: &str, key: Option<&str>| {
        let mut request = stack.http.get(stack.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    let list: Value = get("/v1/models", Some(&key)).await?.json().await?;
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|model| model["id"].as_str())
        .collect();
    assert_eq!(ids, ["gpt-test", "gpt-other"]);
    assert_eq!(list["data"][0]["object"], "model");
    // A base URL with a trailing slash: Open WebUI then asks for `//models`.
    let doubled: Value = get("/v1//models", Some(&key)).await?.json().await?;
    assert_eq!(doubled, list);
    let one: Value = get("/v1/models/gpt-other", Some(&key))
        .await?
        .json()
        .await?;
    assert_eq!(one["id"], "gpt-other");

    let unknown = get("/v1/models/gpt-5-ultra", Some(&key)).await?;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let (kind, code, param) = error_of(&unknown.json().await?);
    assert_eq!(
        (kind.as_str(), code.as_str(), param.as_str()),
        ("invalid_request_error", "model_not_found", "model")
    );
    let (status, error) = complete(
        &stack,
        &key,
        &json!({"model": "gpt-5-ultra", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&error).1, "model_not_found");
    assert!(stack.provider.requests().is_empty());

    let anonymous = get("/v1/models", None).await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&anonymous.json().await?).1, "invalid_api_key");

    // Never the UI's page under /v1, whatever the method and path.
    for (method, path) in [
        (reqwest::Method::GET, "/v1"),
        (reqwest::Method::GET, "/v1/"),
        (reqwest::Method::GET, "/v1/engines"),
        (reqwest::Method::GET, "/v1/chat/completions"),
        (reqwest::Method::POST, "/v1/embeddings"),
        (reqwest::Method::DELETE, "/v1/models/gpt-test"),
    ] {
        let response = stack
            .http
            .request(method.clone(), stack.url(path))
            .bearer_auth(&key)
            .header(CONTENT_TYPE, "application/json")
            .body("{}")
            .send()
            .await?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {status}"
        );
        assert!(
            content_type.starts_with("application/json"),
            "{method} {path}: {content_type}"
        );
        let body: Value = response.json().await?;
        error_of(&body);
    }
    Ok(())
}

#[tokio::test]
async fn errors_come_in_openai_shape_with_openai_statuses() -> anyhow::Result<()> {
    let stack = stack().await?;
    let key = key_for(&stack, "errs", json!({})).await?;
    let limit = remaining(&stack, &key).await?;

    let (status, error) = complete(&stack, "sk-chat-wrong-key", &ask("hi")).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&error).1, "invalid_api_key");

    let blocked = json!({"model": "gpt-test", "messages": [
        {"role": "user", "content": "an innocent question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "tell me about foo"}
    ]});
    let (status, error) = complete(&stack, &key, &blocked).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_of(&error),
        (
            "invalid_request_error".into(),
            "content_filter".into(),
            "messages[2].content".into()
        )
    );
    // An earlier user turn is the user's text too.
    let smuggled = json!({"model": "gpt-test", "messages": [
        {"role": "user", "content": "foo"}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "and now?"}
    ]});
    let (status, error) = complete(&stack, &key, &smuggled).await?;
    assert_eq!(
        (status, error_of(&error).1.as_str()),
        (StatusCode::BAD_REQUEST, "content_filter")
    );

    stack.provider.then([Upstream::InsufficientQuota]);
    let (status, error) = complete(&stack, &key, &ask("hi")).await?;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(error_of(&error).0, "insufficient_quota");

    stack.provider.then([Upstream::ServerError]);
    let (status, error) = complete(&stack, &key, &ask("hi")).await?;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (kind, code, _) = error_of(&error);
    assert_eq!(
        (kind.as_str(), code.as_str()),
        ("server_error", "service_failed")
    );
    assert!(
        !error.to_string().contains(chat_testing::stack::API_KEY),
        "{error}"
    );

    stack
        .provider
        .then([Upstream::BadRequest("Invalid value for 'seed'".into())]);
    let (status, error) = complete(&stack, &key, &ask("hi")).await?;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the provider refused it: the client's to fix"
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Invalid value for 'seed'"))
    );

    stack.provider.always(Upstream::RateLimited);
    let (status, error) = complete(&stack, &key, &ask("hi")).await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_of(&error).1, "rate_limit_exceeded");
    stack.provider.always(Upstream::Echo);

    assert_eq!(
        remaining(&stack, &key).await?,
        limit,
        "no failure cost anything"
    );
    Ok(())
}

#[tokio::test]
async fn a_spent_quota_is_429_until_the_reset_and_says_not_to_retry() -> anyhow::Result<()> {
    let stack = stack().await?;
    let key = key_for(&stack, "broke", json!({"daily_limit": 10})).await?;
    let response = post(&stack, &key, &ask("hi")).await?;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after: u64 = header(RETRY_AFTER.as_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        retry_after > 0 && retry_after <= 86_400,
        "until the reset: {retry_after}"
    );
    assert_eq!(header("x-should-retry").as_deref(), Some("false"));
    let (kind, code, _) = error_of(&response.json().await?);
    assert_eq!((kind.as_str(), code.as_str()), ("tokens", "quota_exceeded"));
    assert!(stack.provider.requests().is_empty());
    Ok(())
}

#[tokio::test]
async fn the_rate_limiter_covers_v1_and_answers_in_openai_shape() -> anyhow::Result<()> {
    let stack = stack().await?;
    let key = key_for(&stack, "hasty", json!({"rate_limit_per_minute": 1})).await?;
    assert_eq!(complete(&stack, &key, &ask("one")).await?.0, StatusCode::OK);
    let response = post(&stack, &key, &ask("two")).await?;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().get(RETRY_AFTER).is_some());
    assert!(
        response.headers().get("x-should-retry").is_none(),
        "worth retrying later"
    );
    let (kind, code, _) = error_of(&response.json().await?);
    assert_eq!(
        (kind.as_str(), code.as_str()),
        ("requests", "rate_limit_exceeded")
    );
    // A doubled slash is not a way around it.
    let doubled = stack
        .http
        .post(stack.url("/v1//chat/completions"))
        .bearer_auth(&key)
        .json(&ask("three"))
        .send()
        .await?;
    assert_eq!(doubled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(stack.provider.requests().len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_stream_sends_chunks_then_the_usage_last_then_done_and_is_settled_exactly()
-> anyhow::Result<()> {
    let stack = stack().await?;
    let key = key_for(&stack, "streamer", json!({})).await?;
    let limit = remaining(&stack, &key).await?;
    let mut body = ask("stream me");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = post(&stack, &key, &body).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.to_str().is_ok_and(|v| v.starts_with("text/event-stream")))
    );
    let lines = data_lines(&response.text().await?);
    assert_eq!(lines.last().map(String::as_str), Some("[DONE]"));
    let all = chunks(&lines);
    assert!(
        all.iter()
            .all(|chunk| chunk["object"] == "chat.completion.chunk")
    );
    let id = &all[0]["id"];
    assert!(
        all.iter().all(|chunk| chunk["id"] == *id),
        "one id for the stream"
    );
    assert_eq!(all[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = all
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "echo: stream me");
    let finish: Vec<&Value> = all
        .iter()
        .map(|chunk| &chunk["choices"][0]["finish_reason"])
        .filter(|reason| !reason.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")]);
    let last = all.last().cloned().unwrap_or_default();
    assert_eq!(last["choices"], json!([]), "the usage chunk has no choices");
    let expected = fake_usage(&["stream me"], "echo: stream me");
    assert_eq!(last["usage"]["total_tokens"], expected);
    assert_eq!(
        remaining_becomes(&stack, &key, limit - expected).await?,
        limit - expected
    );

    // Not asked for: no usage chunk, but the provider is asked for it all the same.
    body["stream_options"] = json!(null);
    let lines = data_lines(&post(&stack, &key, &body).await?.text().await?);
    assert!(
        chunks(&lines)
            .iter()
            .all(|chunk| chunk.get("usage").is_none_or(Value::is_null))
    );
    assert_eq!(lines.last().map(String::as_str), Some("[DONE]"));
    let requests = stack.provider.requests();
    assert!(
        requests
            .iter()
            .all(|sent| sent["stream"] == true && sent["stream_options"]["include_usage"] == true)
    );
    let twice = limit - 2 * expected;
    assert_eq!(remaining_becomes(&stack, &key, twice).await?, twice);
    Ok(())
}

#[tokio::test]
async fn tool_calls_come_back_whole_and_streamed_and_their_results_go_out() -> anyhow::Result<()> {
    let stack = stack().await?;
    let key = key_for(&stack, "tooler", json!({})).await?;
    let tools = json!([{"type": "function", "function": {"name": "get_weather"}}]);
    let mut body = ask("weather in Paris?");
    body["tools"] = tools.clone();
    let (status, answer) = complete(&stack, &key, &body).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["id"], "call_fake_1");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments = call["function"]["arguments"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments)?,
        json!({"echo": "weather in Paris?"})
    );

    // Streamed: the id and name first, the arguments in pieces, then the finish reason.
    body["stream"] = json!(true);
    let lines = data_lines(&post(&stack, &key, &body).await?.text().await?);
    let all = chunks(&lines);
    let pieces: Vec<&Value> = all
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert!(pieces.len() > 2, "{lines:?}");
    assert_eq!(pieces[0]["id"], "call_fake_1");
    assert_eq!(pieces[0]["function"]["name"], "get_weather");
    assert!(pieces.iter().all(|piece| piece["index"] == 0));
    let streamed: String = pieces
        .iter()
        .filter_map(|piece| piece["function"]["arguments"].as_str())
        .collect();
    assert_eq!(streamed, arguments);
    assert!(
        all.iter()
            .any(|chunk| chunk["choices"][0]["finish_reason"] == "tool_calls")
    );
    assert_eq!(lines.last().map(String::as_str), Some("[DONE]"));

    // The result goes back; the model answers in text.
    let answered = json!({"model": "gpt-test", "tools": tools, "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_fake_1", "content": "sunny"}
    ]});
    let (status, answer) = complete(&stack, &key, &answered).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "echo: weather in Paris?"
    );
    let sent = stack.provider.requests().pop().unwrap_or_default();
    assert_eq!(
        sent["messages"][1]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(sent["messages"][2]["role"], "tool");
    assert_eq!(sent["messages"][2]["tool_call_id"], "call_fake_1");
    Ok(())
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_is_charged_what_the_provider_reported()
-> anyhow::Result<()> {
    let stack = stack().await?;
    let key = key_for(&stack, "leaver", json!({})).await?;
    let limit = remaining(&stack, &key).await?;
    let reply = "one two three four five six seven eight nine ten";
    stack.provider.then([Upstream::Streamed {
        text: reply.into(),
        chunk_delay: Duration::from_millis(60),
    }]);
    let mut body = ask("count to ten");
    body["stream"] = json!(true);
    let mut response = post(&stack, &key, &body).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let first = response.chunk().await?;
    assert!(first.is_some());
    drop(response);
    let expected = limit - fake_usage(&["count to ten"], reply);
    assert_eq!(
        remaining_becomes(&stack, &key, expected).await?,
        expected,
        "settled to the usage the provider reported at the end"
    );
    assert_eq!(stack.provider.cancelled_streams(), 0, "read to its end");
    let saved = history_with(&stack, &key, 2).await?;
    assert_eq!(saved.len(), 2, "{saved:?}");
    assert_eq!(saved[1]["text"], reply, "the whole reply, read to its end");
    assert_eq!(
        saved[1]["incomplete"], true,
        "the client did not get all of it"
    );
    Ok(())
}

#[tokio::test]
async fn a_stream_that_breaks_ends_in_an_error_chunk_and_charges_what_was_generated()
-> anyhow::Result<()> {
    let stack = stack().await?;
    let key = key_for(&stack, "broken", json!({})).await?;
    let limit = remaining(&stack, &key).await?;
    stack.provider.then([Upstream::BrokenStream {
        text: "one two three four".into(),
        after_chunks: 2,
    }]);
    let mut body = ask("go");
    body["stream"] = json!(true);
    let lines = data_lines(&post(&stack, &key, &body).await?.text().await?);
    let last: Value = serde_json::from_str(lines.last().map_or("null", String::as_str))?;
    assert!(last["error"]["message"].is_string(), "{lines:?}");
    assert!(!lines.contains(&"[DONE]".to_owned()));
    let prompt = tokens::count_prompt(["go"]) as i64;
    let expected = limit - prompt - tokens::count("one two ") as i64;
    assert_eq!(remaining_becomes(&stack, &key, expected).await?, expected);
    let saved = history_with(&stack, &key, 2).await?;
    assert_eq!(saved.len(), 2, "{saved:?}");
    assert_eq!(saved[1]["text"], "one two ");
    assert_eq!(saved[1]["incomplete"], true);
    Ok(())
}

#[tokio::test]
async fn requests_naming_one_conversation_land_in_it() -> anyhow::Result<()> {
    let stack = stack().await?;
    let key = key_for(&stack, "talker", json!({})).await?;
    let conversation_of = |header: Option<(&'static str, &'static str)>, text: &'static str| {
        let mut request = stack
            .http
            .post(stack.url(COMPLETIONS))
            .bearer_auth(&key)
            .json(&ask(text));
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await?;
            anyhow::ensure!(response.status() == StatusCode::OK, "{response:?}");
            Ok::<_, anyhow::Error>(
                response
                    .headers()
                    .get("x-conversation-id")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    };
    let first = conversation_of(Some(("x-conversation-id", "thread-1")), "first").await?;
    let second = conversation_of(Some(("x-conversation-id", "thread-1")), "second").await?;
    let webui = conversation_of(Some(("x-openwebui-chat-id", "webui-chat-9")), "third").await?;
    let again = conversation_of(Some(("x-openwebui-chat-id", "webui-chat-9")), "fourth").await?;
    let lone = conversation_of(None, "fifth").await?;
    let other_lone = conversation_of(None, "sixth").await?;
    assert!(!first.is_empty());
    assert_eq!(first, second, "one X-Conversation-Id, one conversation");
    assert_eq!(webui, again, "Open WebUI's chat id groups too");
    assert_ne!(first, webui);
    assert_ne!(
        lone, other_lone,
        "without a key, a conversation per request"
    );
    assert_ne!(lone, first);
    Ok(())
}

#[tokio::test]
async fn without_authentication_the_user_field_names_the_user() -> anyhow::Result<()> {
    let stack = Stack::start_with(|settings| {
        settings.gateway.auth_mode = chat_gateway::AuthMode::None;
    })
    .await?;
    let before = stack.remaining("end-user-1").await?;
    let mut body = ask("hi");
    body["user"] = json!("end-user-1");
    let (status, answer) = complete(&stack, "any-key-at-all", &body).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let spent = answer["usage"]["total_tokens"].as_i64().unwrap_or(-1);
    assert_eq!(stack.remaining("end-user-1").await?, before - spent);
    assert_eq!(stack.history("end-user-1").await?.len(), 2);

    let (status, _) = complete(&stack, "any-key-at-all", &ask("hello")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stack.history("anonymous").await?.len(),
        2,
        "no user: anonymous"
    );

    body["user"] = json!("not a valid id!");
    let (status, error) = complete(&stack, "k", &body).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&error).2, "user");
    Ok(())
}

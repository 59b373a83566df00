//! The HTTP API end to end: every service in-process, real Redis and MySQL, and a real
//! HTTP server speaking OpenAI's wire format as the provider.

mod support;

use std::time::Duration;

use chat_testing::Upstream;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Stack, total_tokens};

#[tokio::test]
async fn a_chat_goes_through_every_service_and_is_saved() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (status, body) = stack.chat("u1", "Hello   world   from   Go!").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["cleaned"], "Hello world from Go!");
    assert_eq!(body["reply"], "echo: Hello world from Go!");
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["history_saved"], true);
    let usage = &body["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_i64(),
        usage["completion_tokens"].as_i64(),
    );
    assert!(prompt > Some(0) && completion > Some(0), "{usage}");
    assert_eq!(
        total_tokens(&body),
        prompt.unwrap_or(0) + completion.unwrap_or(0)
    );
    assert_eq!(
        body["remaining"].as_i64(),
        Some(stack.daily_limit - total_tokens(&body))
    );
    assert_eq!(
        stack.history("u1").await?,
        [
            ("user".to_owned(), "Hello world from Go!".to_owned()),
            (
                "assistant".to_owned(),
                "echo: Hello world from Go!".to_owned()
            ),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn remaining_is_the_limit_minus_the_real_usage_of_every_chat() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut spent = 0;
    for i in 0..6 {
        let text = format!("message number {i} {}", "word ".repeat(i * 7));
        let (status, body) = stack.chat("u1", &text).await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        spent += total_tokens(&body);
        assert_eq!(body["remaining"].as_i64(), Some(stack.daily_limit - spent));
    }
    assert_eq!(stack.remaining("u1").await?, stack.daily_limit - spent);
    assert_eq!(stack.remaining("someone-else").await?, stack.daily_limit);
    Ok(())
}

#[tokio::test]
async fn the_provider_sees_the_conversation_not_just_the_last_message() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    stack.chat("u1", "my name is Ada").await?;
    stack.chat("u2", "unrelated user").await?;
    let (status, _) = stack.chat("u1", "what is my name?").await?;
    assert_eq!(status, StatusCode::OK);
    let requests = stack.provider.requests();
    let last = requests.last().cloned().unwrap_or_default();
    assert_eq!(
        last["messages"],
        json!([
            {"role": "user", "content": "my name is Ada"},
            {"role": "assistant", "content": "echo: my name is Ada"},
            {"role": "user", "content": "what is my name?"},
        ])
    );
    Ok(())
}

#[tokio::test]
async fn history_is_oldest_first_and_keeps_chinese_and_emoji() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    for text in ["第一条：你好，世界 🌏", "second", "第三条 🚀"] {
        let (status, _) = stack.chat("u1", text).await?;
        assert_eq!(status, StatusCode::OK);
    }
    let texts = stack.history_texts("u1").await?;
    assert_eq!(
        texts,
        [
            "第一条:你好,世界 🌏", // NFKC folds the full-width punctuation
            "echo: 第一条:你好,世界 🌏",
            "second",
            "echo: second",
            "第三条 🚀",
            "echo: 第三条 🚀",
        ]
    );
    // The second read comes from the cache and says the same.
    assert_eq!(stack.history_texts("u1").await?, texts);
    Ok(())
}

/// The `Retry-After` header in seconds, 0 when absent.
fn retry_after(response: &reqwest::Response) -> u64 {
    response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

async fn post_raw(
    stack: &Stack,
    body: impl Into<reqwest::Body>,
) -> anyhow::Result<(StatusCode, Value)> {
    let response = stack
        .http
        .post(stack.url("/chat"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    Ok((response.status(), response.json().await?))
}

#[tokio::test]
async fn bad_input_gets_a_clear_json_error_and_costs_nothing() -> anyhow::Result<()> {
    let stack = Stack::start_with(|config| config.filter.max_text_chars = 50).await?;
    let cases: Vec<(reqwest::Body, u16, &str)> = vec![
        ("{not json".into(), 400, "bad json or missing user_id"),
        (
            r#"{"text":"hi"}"#.into(),
            400,
            "bad json or missing user_id",
        ),
        (
            r#"{"user_id":"","text":"hi"}"#.into(),
            400,
            "invalid user_id",
        ),
        (
            r#"{"user_id":"a b","text":"hi"}"#.into(),
            400,
            "invalid user_id",
        ),
        (
            json!({"user_id": "x".repeat(65), "text": "hi"})
                .to_string()
                .into(),
            400,
            "invalid user_id",
        ),
        (
            r#"{"user_id":"u1","text":"   "}"#.into(),
            400,
            "invalid text",
        ),
        (
            json!({"user_id": "u1", "text": "y".repeat(51)})
                .to_string()
                .into(),
            400,
            "invalid text",
        ),
        (
            json!({"user_id": "u1", "text": "z".repeat(70_000)})
                .to_string()
                .into(),
            413,
            "payload too large",
        ),
        (
            r#"{"user_id":"u1","text":"foo bar"}"#.into(),
            400,
            "text blocked by filter",
        ),
    ];
    for (body, status, error) in cases {
        let (got_status, got) = post_raw(&stack, body).await?;
        assert_eq!(
            (got_status.as_u16(), got["error"].as_str()),
            (status, Some(error)),
            "{got}"
        );
        assert!(
            got["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{got}"
        );
        // The stable code programs match on: the original's string in snake_case.
        let code = match error {
            "bad json or missing user_id" => "bad_request".to_owned(),
            "text blocked by filter" => "blocked".to_owned(),
            other => other.replace(' ', "_"),
        };
        assert_eq!(got["code"].as_str(), Some(code.as_str()), "{got}");
    }
    let (_, blocked) = post_raw(&stack, r#"{"user_id":"u1","text":"foo bar"}"#).await?;
    assert!(
        blocked["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("foo"),
        "{blocked}"
    );
    // "food" is not "foo".
    let (status, _) = stack.chat("u1", "food").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stack.provider.requests().len(),
        1,
        "only the accepted chat reached the provider"
    );
    assert_eq!(stack.history("u1").await?.len(), 2);

    let response = stack.http.get(stack.url("/history")).send().await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = stack
        .http
        .get(stack.url("/history?user_id=bad%20id"))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await?;
    assert_eq!(body["error"], "invalid user_id");
    Ok(())
}

#[tokio::test]
async fn health_ui_and_unknown_paths() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let health = stack.http.get(stack.url("/health")).send().await?;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await?, "ok");
    for path in ["/", "/some/client/route"] {
        let page = stack.http.get(stack.url(path)).send().await?;
        assert_eq!(page.status(), StatusCode::OK);
        assert!(page.text().await?.contains("<html"), "{path}");
    }
    let unknown = stack.http.post(stack.url("/nope")).send().await?;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let body: Value = unknown.json().await?;
    assert_eq!(body["error"], "not found");
    Ok(())
}

/// Runs one chat against a misbehaving provider; answers the status, the body, and
/// what the user has left afterwards.
async fn chat_against(
    upstream: Upstream,
    llm_timeout_ms: u64,
) -> anyhow::Result<(StatusCode, Value, i64, Stack)> {
    let stack = Stack::start_with(|config| config.gateway.llm_timeout_ms = llm_timeout_ms).await?;
    stack.provider.always(upstream);
    let (status, body) = stack.chat("u1", "hello").await?;
    let remaining = stack.remaining("u1").await?;
    Ok((status, body, remaining, stack))
}

#[tokio::test]
async fn a_provider_without_credit_is_402_and_the_reservation_is_refunded() -> anyhow::Result<()> {
    let (status, body, remaining, stack) =
        chat_against(Upstream::InsufficientQuota, 10_000).await?;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["error"], "insufficient_quota");
    assert_eq!(remaining, stack.daily_limit);
    assert!(stack.history("u1").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_provider_that_keeps_rate_limiting_is_429_and_refunded() -> anyhow::Result<()> {
    let (status, body, remaining, stack) = chat_against(Upstream::RateLimited, 10_000).await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(remaining, stack.daily_limit);
    Ok(())
}

#[tokio::test]
async fn a_provider_rate_limit_then_success_is_retried_transparently() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    stack
        .provider
        .then([Upstream::RateLimited, Upstream::RateLimited]);
    let (status, body) = stack.chat("u1", "hello").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(stack.provider.requests().len(), 3);
    assert_eq!(
        stack.remaining("u1").await?,
        stack.daily_limit - total_tokens(&body)
    );
    Ok(())
}

#[tokio::test]
async fn a_provider_error_is_500_llm_failed_without_secrets_and_refunded() -> anyhow::Result<()> {
    let (status, body, remaining, stack) = chat_against(Upstream::ServerError, 10_000).await?;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"], "llm failed");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("500"), "{detail}");
    assert!(!body.to_string().contains("sk-test"), "{body}");
    assert_eq!(remaining, stack.daily_limit);
    Ok(())
}

#[tokio::test]
async fn a_provider_too_slow_for_the_deadline_is_504_and_refunded() -> anyhow::Result<()> {
    let (status, body, remaining, stack) =
        chat_against(Upstream::Slow(Duration::from_secs(5)), 500).await?;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body["error"], "llm failed");
    assert_eq!(remaining, stack.daily_limit);
    Ok(())
}

/// A stack whose users may spend `limit` tokens a day, each chat reserving at least 50.
async fn stack_with_daily_limit(limit: i64) -> anyhow::Result<Stack> {
    Stack::start_with(|config| {
        config.token.daily_limit = limit;
        config.gateway.min_reservation = 50;
    })
    .await
}

/// Checks the answers of concurrent chats of `u1` against a daily `limit`: each is a 200
/// (which `answered` checks further) or a 429 `quota_exceeded`, both happened, the
/// answered ones spent no more than the limit, and the quota left is exactly the limit
/// minus the usage the callers were told.
async fn ensure_the_quota_held(
    stack: &Stack,
    limit: i64,
    results: &[(StatusCode, Value)],
    answered: impl Fn(&Value),
) -> anyhow::Result<()> {
    let mut spent = 0;
    let (mut ok, mut refused) = (0, 0);
    for (status, body) in results {
        match status.as_u16() {
            200 => {
                ok += 1;
                spent += total_tokens(body);
                answered(body);
            }
            429 => {
                assert_eq!(body["error"], "quota_exceeded");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} answered, {refused} refused");
    assert!(spent <= limit, "spent {spent} of {limit}");
    assert_eq!(stack.remaining("u1").await?, limit - spent);
    Ok(())
}

#[tokio::test]
async fn a_spent_quota_is_429_with_retry_after_until_the_reset() -> anyhow::Result<()> {
    let stack = stack_with_daily_limit(400).await?;
    let mut spent = 0;
    let refused = loop {
        let response = stack.post_chat("u1", "tell me something").await?;
        if response.status() != StatusCode::OK {
            break response;
        }
        let body: Value = response.json().await?;
        spent += total_tokens(&body);
        anyhow::ensure!(spent <= 400, "spent past the limit");
    };
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after = retry_after(&refused);
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await?;
    assert_eq!(body["error"], "quota_exceeded");
    assert_eq!(body["remaining"].as_i64(), Some(400 - spent));
    assert_eq!(body["reset_after_seconds"].as_u64(), Some(retry_after));
    Ok(())
}

#[tokio::test]
async fn fifty_concurrent_chats_never_spend_past_a_small_quota() -> anyhow::Result<()> {
    let limit = 1500;
    let stack = stack_with_daily_limit(limit).await?;
    let chats = (0..50).map(|i| stack.chat("u1", if i % 2 == 0 { "hello there" } else { "hi" }));
    let results = futures::future::try_join_all(chats).await?;
    ensure_the_quota_held(&stack, limit, &results, |_| {}).await
}

#[tokio::test]
async fn the_rate_limiter_answers_429_at_once_with_retry_after() -> anyhow::Result<()> {
    let stack = Stack::start_with(|config| config.gateway.rate_limit_per_minute = 2).await?;
    for _ in 0..2 {
        let (status, _) = stack.chat("u1", "hello").await?;
        assert_eq!(status, StatusCode::OK);
    }
    let response = stack.post_chat("u1", "hello").await?;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after = retry_after(&response);
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await?;
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(
        stack.provider.requests().len(),
        2,
        "the refused chat never reached the provider"
    );
    Ok(())
}

#[tokio::test]
async fn a_service_that_is_down_is_a_prompt_5xx_not_a_hang() -> anyhow::Result<()> {
    // Nothing listens on the token service's address.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let stack =
        Stack::start_with(|config| config.gateway.token_addr = format!("http://{closed}")).await?;
    let (status, body) = stack.chat("u1", "hello").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "token failed");
    assert_eq!(body["code"], "service_unavailable");
    assert_eq!(body["service"], "token");
    assert!(stack.provider.requests().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_chat_still_gets_charged_and_saved() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    stack
        .provider
        .then([Upstream::Slow(Duration::from_millis(800))]);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()?;
    let gave_up = impatient
        .post(stack.url("/chat"))
        .json(&json!({"user_id": "u1", "text": "are you there?"}))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out first");
    // The chat finishes without its client: saved, and settled to the real usage.
    let mut history = Vec::new();
    for _ in 0..100 {
        history = stack.history("u1").await?;
        if history.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(history.len(), 2, "{history:?}");
    let sent = stack.provider.requests();
    let contents: Vec<&str> = sent[0]["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|message| message["content"].as_str())
        .collect();
    let used = chat_common::tokens::count_prompt(contents)
        + chat_common::tokens::count("echo: are you there?");
    assert_eq!(
        stack.remaining("u1").await?,
        stack.daily_limit - used as i64
    );
    Ok(())
}

#[tokio::test]
async fn past_the_concurrency_cap_a_request_is_shed_at_once_with_503() -> anyhow::Result<()> {
    let stack = Stack::start_with(|config| config.gateway.max_concurrent_requests = 1).await?;
    stack
        .provider
        .always(Upstream::Slow(Duration::from_millis(1500)));
    let slow = stack.chat("u1", "hold the only slot");
    let refused = async {
        // Let the first request take the slot.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = std::time::Instant::now();
        let response = stack
            .http
            .get(stack.url("/quota?user_id=u2"))
            .send()
            .await?;
        anyhow::Ok((started.elapsed(), response))
    };
    let (slow, refused) = tokio::join!(slow, refused);
    let (elapsed, refused) = refused?;
    assert_eq!(slow?.0, StatusCode::OK, "the request in the slot finishes");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        elapsed < Duration::from_millis(1000),
        "shed at once, not queued: {elapsed:?}"
    );
    assert_eq!(
        refused.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(refused.json::<Value>().await?["code"], "overloaded");
    let (status, _) = stack.chat("u1", "the slot is free again").await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_cut_off() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start().await?;
    let addr = stack.base.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await?;
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await?;
    // Never finishes its headers: the server closes the connection after its timeout.
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the connection is still open after 20 s");
    // Meanwhile everyone else is served.
    assert_eq!(
        stack.http.get(stack.url("/health")).send().await?.status(),
        StatusCode::OK
    );
    Ok(())
}

#[tokio::test]
async fn a_provider_counting_twice_our_tokens_never_spends_past_the_limit() -> anyhow::Result<()> {
    // Reservations sized by our tokenizer alone let 120 concurrent chats spend 5,273 of
    // 5,000 against such a provider; calibrated per model, never past the limit.
    let limit = 5000;
    let stack = stack_with_daily_limit(limit).await?;
    stack.provider.count_prompts_times(2.0);
    // Short replies: the prompt is most of each chat's cost.
    stack.provider.always(Upstream::Reply("Noted.".to_owned()));
    let text = |i: usize| {
        format!(
            "question {i}: {}",
            "tell me about the history of the river, the bridges over it, the towns along \
             its banks and the boats that sailed it in the old days. "
                .repeat(4)
        )
    };
    let stack = &stack;
    let chats = (0..120).map(|i| {
        let text = text(i);
        async move { stack.chat("u1", &text).await }
    });
    let results = futures::future::try_join_all(chats).await?;
    ensure_the_quota_held(stack, limit, &results, |body| {
        let usage = &body["usage"];
        assert!(
            usage["prompt_tokens"].as_i64() > Some(200),
            "the provider counted the prompt double: {usage}"
        );
    })
    .await
}

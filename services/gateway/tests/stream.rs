//! `POST /chat/stream` end to end: server-sent events through every service, errors
//! before the first delta with their HTTP status, a stream that breaks half way, and a
//! client that leaves mid-stream.

mod support;

use std::time::Duration;

use chat_common::tokens;
use chat_testing::Upstream;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::Stack;

/// One server-sent event: its name and JSON data.
type Event = (String, Value);

/// Reads events from an SSE response until it ends, or until `stop_after` events.
async fn read_events(
    response: reqwest::Response,
    stop_after: Option<usize>,
) -> anyhow::Result<Vec<Event>> {
    let mut bytes = response.bytes_stream();
    let (mut buffer, mut events) = (String::new(), Vec::new());
    while let Some(chunk) = bytes.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let Some((name, data)) = support::sse_event(&block) else {
                continue; // keep-alive comment
            };
            events.push((name, serde_json::from_str(&data)?));
            if stop_after.is_some_and(|count| events.len() >= count) {
                return Ok(events);
            }
        }
    }
    Ok(events)
}

async fn open_stream(stack: &Stack, text: &str) -> anyhow::Result<reqwest::Response> {
    Ok(stack
        .http
        .post(stack.url("/chat/stream"))
        .json(&json!({"user_id": "u1", "text": text}))
        .send()
        .await?)
}

fn deltas(events: &[Event]) -> String {
    events
        .iter()
        .filter(|(name, _)| name == "delta")
        .filter_map(|(_, data)| data["text"].as_str())
        .collect()
}

/// What the fake provider charges for the prompt of its `index`-th request.
fn prompt_tokens(stack: &Stack, index: usize) -> i64 {
    let requests = stack.provider.requests();
    let contents: Vec<&str> = requests[index]["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|message| message["content"].as_str())
        .collect();
    tokens::count_prompt(contents) as i64
}

#[tokio::test]
async fn a_streamed_chat_sends_start_deltas_and_done() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let response = open_stream(&stack, "Hello   streaming   world").await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"))
    );
    let events = read_events(response, None).await?;
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names.first(), Some(&"start"));
    assert_eq!(names.last(), Some(&"done"));
    assert!(
        names.iter().filter(|name| **name == "delta").count() > 1,
        "{names:?}"
    );
    assert_eq!(events[0].1["cleaned"], "Hello streaming world");
    assert_eq!(events[0].1["trace_id"].as_str().map(str::len), Some(32));
    assert_eq!(deltas(&events), "echo: Hello streaming world");
    let done = &events[events.len() - 1].1;
    let total = done["usage"]["total_tokens"].as_i64().unwrap_or(0);
    assert!(total > 0);
    assert_eq!(done["remaining"].as_i64(), Some(stack.daily_limit - total));
    assert_eq!(done["history_saved"], true);
    assert_eq!(stack.remaining("u1").await?, stack.daily_limit - total);
    let history = stack.history_items("u1").await?;
    assert_eq!(history[1]["text"], "echo: Hello streaming world");
    assert_eq!(history[1]["incomplete"], false);
    Ok(())
}

#[tokio::test]
async fn errors_before_the_first_delta_keep_their_http_status() -> anyhow::Result<()> {
    let stack = Stack::start_with(|config| config.gateway.rate_limit_per_minute = 2).await?;
    let blocked = open_stream(&stack, "foo bar").await?;
    assert_eq!(blocked.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        blocked.json::<Value>().await?["error"],
        "text blocked by filter"
    );

    stack.provider.then([Upstream::InsufficientQuota]);
    let no_credit = open_stream(&stack, "hello").await?;
    assert_eq!(no_credit.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        no_credit.json::<Value>().await?["error"],
        "insufficient_quota"
    );
    assert_eq!(stack.remaining("u1").await?, stack.daily_limit, "refunded");

    let limited = open_stream(&stack, "hello").await?;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.json::<Value>().await?["error"], "rate_limited");
    Ok(())
}

#[tokio::test]
async fn a_stream_that_breaks_half_way_charges_and_saves_what_was_generated() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    stack.provider.then([Upstream::BrokenStream {
        text: "alpha beta gamma delta epsilon".into(),
        after_chunks: 3,
    }]);
    let response = open_stream(&stack, "tell me five words").await?;
    assert_eq!(response.status(), StatusCode::OK);
    let events = read_events(response, None).await?;
    assert_eq!(deltas(&events), "alpha beta gamma ");
    let (name, error) = &events[events.len() - 1];
    assert_eq!(name, "error");
    assert_eq!(error["error"], "llm failed");
    assert_eq!(error["incomplete"], true);
    let charged = prompt_tokens(&stack, 0) + tokens::count("alpha beta gamma ") as i64;
    assert_eq!(stack.remaining("u1").await?, stack.daily_limit - charged);
    let history = stack.history_items("u1").await?;
    assert_eq!(history[1]["text"], "alpha beta gamma ");
    assert_eq!(history[1]["incomplete"], true);
    Ok(())
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_cancels_upstream_and_pays_for_what_was_generated()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let words: Vec<String> = (1..=40).map(|i| format!("word{i}")).collect();
    stack.provider.then([Upstream::Streamed {
        text: words.join(" "),
        chunk_delay: Duration::from_millis(50),
    }]);
    let response = open_stream(&stack, "count to forty").await?;
    let events = read_events(response, Some(4)).await?; // start and three deltas, then leave
    assert_eq!(events[0].0, "start");
    drop(events);
    // The provider sees its request cancelled long before the forty words are done.
    for _ in 0..100 {
        if stack.provider.cancelled_streams() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stack.provider.cancelled_streams(), 1);
    // The partial reply is saved, marked incomplete, and charged.
    let history = stack.history_with("u1", 2).await?;
    let partial = history[1]["text"].as_str().unwrap_or_default().to_owned();
    assert_eq!(history[1]["incomplete"], true);
    assert!(partial.starts_with("word1 word2 word3 "), "{partial:?}");
    assert!(partial.len() < words.join(" ").len(), "{partial:?}");
    let charged = prompt_tokens(&stack, 0) + tokens::count(&partial) as i64;
    assert_eq!(stack.remaining("u1").await?, stack.daily_limit - charged);
    Ok(())
}

#[tokio::test]
async fn a_client_that_leaves_before_the_first_delta_cancels_upstream_at_once() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    // The provider answers its headers at once, then takes a long time per word.
    stack.provider.then([Upstream::Streamed {
        text: "slow words that nobody waits for".into(),
        chunk_delay: Duration::from_secs(3),
    }]);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()?;
    let gave_up = impatient
        .post(stack.url("/chat/stream"))
        .json(&json!({"user_id": "u1", "text": "hello"}))
        .send()
        .await;
    assert!(gave_up.is_err() || gave_up.is_ok_and(|response| response.status() == StatusCode::OK));
    for _ in 0..100 {
        if stack.provider.cancelled_streams() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        stack.provider.cancelled_streams(),
        1,
        "cancelled long before the 3 s word"
    );
    // The prompt was processed by the provider, so it is charged; the empty reply is
    // kept, marked incomplete, beside the user's message.
    let history = stack.history_with("u1", 2).await?;
    assert_eq!(history[0]["text"], "hello");
    assert_eq!(history[1]["incomplete"], true);
    assert_eq!(
        stack.remaining("u1").await?,
        stack.daily_limit - prompt_tokens(&stack, 0)
    );
    Ok(())
}

#[tokio::test]
async fn a_stream_longer_than_its_reservation_keeps_it_until_it_is_charged() -> anyhow::Result<()> {
    // Reservations live one second; the sweeper looks ten times a second; the reply
    // takes about four seconds.
    let stack = Stack::start_with(|settings| {
        settings.token.reservation_ttl_secs = 1;
        settings.token.sweep_interval_ms = 100;
    })
    .await?;
    stack.provider.then([Upstream::Streamed {
        text: "one two three four five six seven eight".to_owned(),
        chunk_delay: Duration::from_millis(500),
    }]);
    let response = open_stream(&stack, "count slowly").await?;
    assert_eq!(response.status(), StatusCode::OK);
    let reading = tokio::spawn(read_events(response, None));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        stack.remaining("u1").await? < stack.daily_limit,
        "the reservation is still held, not refunded by the sweeper"
    );
    let events = reading.await??;
    let done = &events[events.len() - 1];
    assert_eq!(done.0, "done", "{events:?}");
    let total = done.1["usage"]["total_tokens"].as_i64().unwrap_or(0);
    assert!(total > 0);
    assert_eq!(
        done.1["remaining"].as_i64(),
        Some(stack.daily_limit - total)
    );
    // Charged once, and nothing is refunded after it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(stack.remaining("u1").await?, stack.daily_limit - total);
    Ok(())
}

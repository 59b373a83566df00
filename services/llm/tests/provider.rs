//! The real async-openai client path against a local server speaking OpenAI's wire format.

mod support;

use std::time::Duration;

use chat_llm::{Llm, ProviderKind, Settings};
use chat_proto::llm_service_server::LlmService;
use chat_proto::{ChatMessage, CompleteRequest, CompleteResponse, Role};
use chat_testing::{FakeOpenAi, Upstream};
use support::llm;
use tonic::Code;

fn conversation() -> CompleteRequest {
    let message = |role: Role, content: &str| ChatMessage {
        role: role.into(),
        content: content.into(),
        ..ChatMessage::default()
    };
    CompleteRequest {
        messages: vec![
            message(Role::User, "my name is Ada"),
            message(Role::Assistant, "hello Ada"),
            message(Role::User, "what is my name?"),
        ],
        max_tokens: 64,
        user_id: "u1".into(),
        ..CompleteRequest::default()
    }
}

/// Deadlines are generous: the tests of the workspace run at once on two cores, and a
/// fake provider counting tokens in a debug build can take seconds to answer then.
async fn complete(llm: &Llm, deadline: Duration) -> Result<CompleteResponse, tonic::Status> {
    llm.complete(chat_common::grpc::request(conversation(), deadline))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_completion_carries_the_whole_conversation_and_the_real_usage() -> anyhow::Result<()> {
    let fake = FakeOpenAi::start().await?;
    let llm = llm(&fake)?;
    assert_eq!(llm.kind(), ProviderKind::OpenAi);
    let answer = complete(&llm, Duration::from_secs(20)).await?;
    assert_eq!(answer.reply, "echo: what is my name?");
    assert_eq!(answer.model, "gpt-test");
    let usage = answer.usage.unwrap_or_default();
    assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent["model"], "gpt-test");
    assert_eq!(sent["max_completion_tokens"], 64);
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|message| message["role"].as_str())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(sent["messages"][0]["content"], "my name is Ada");
    Ok(())
}

#[tokio::test]
async fn rate_limits_are_retried_then_succeed() -> anyhow::Result<()> {
    let fake = FakeOpenAi::start().await?;
    fake.then([Upstream::RateLimited, Upstream::RateLimited]);
    let answer = complete(&llm(&fake)?, Duration::from_secs(20)).await?;
    assert_eq!(answer.reply, "echo: what is my name?");
    assert_eq!(fake.requests().len(), 3);
    Ok(())
}

#[tokio::test]
async fn a_rate_limit_that_persists_is_resource_exhausted() -> anyhow::Result<()> {
    let fake = FakeOpenAi::start().await?;
    fake.always(Upstream::RateLimited);
    let status = complete(&llm(&fake)?, Duration::from_secs(20)).await.err();
    assert_eq!(
        status.map(|status| status.code()),
        Some(Code::ResourceExhausted)
    );
    // One call and the configured four retries.
    assert_eq!(fake.requests().len(), 5);
    Ok(())
}

#[tokio::test]
async fn an_account_without_credit_is_failed_precondition_and_not_retried() -> anyhow::Result<()> {
    let fake = FakeOpenAi::start().await?;
    fake.always(Upstream::InsufficientQuota);
    let status = complete(&llm(&fake)?, Duration::from_secs(20)).await.err();
    assert_eq!(
        status.map(|status| status.code()),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(fake.requests().len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_server_error_is_internal_without_the_key() -> anyhow::Result<()> {
    let fake = FakeOpenAi::start().await?;
    fake.always(Upstream::ServerError);
    let status = complete(&llm(&fake)?, Duration::from_secs(20)).await.err();
    let status = status.ok_or_else(|| anyhow::anyhow!("expected an error"))?;
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("500"), "{}", status.message());
    assert!(
        !status.message().contains("sk-test-key"),
        "{}",
        status.message()
    );
    Ok(())
}

#[tokio::test]
async fn a_slow_provider_runs_into_the_deadline() -> anyhow::Result<()> {
    let fake = FakeOpenAi::start().await?;
    fake.always(Upstream::Slow(Duration::from_secs(5)));
    let status = complete(&llm(&fake)?, Duration::from_millis(300))
        .await
        .err();
    assert_eq!(
        status.map(|status| status.code()),
        Some(Code::DeadlineExceeded)
    );
    Ok(())
}

#[tokio::test]
async fn without_a_key_the_mock_answers_and_says_so() -> anyhow::Result<()> {
    let llm = Llm::new(&Settings::default())?;
    assert_eq!(llm.kind(), ProviderKind::Mock);
    let answer = complete(&llm, Duration::from_secs(10)).await?;
    assert!(answer.reply.contains("mock"), "{}", answer.reply);
    assert!(
        answer.reply.contains("what is my name?"),
        "{}",
        answer.reply
    );
    assert_eq!(
        answer,
        complete(&llm, Duration::from_secs(10)).await?,
        "deterministic"
    );
    assert!(answer.usage.is_some_and(|usage| usage.total_tokens > 0));
    Ok(())
}

#[test]
fn an_openai_provider_without_a_key_stops_the_service() {
    let error = Llm::new(&Settings {
        llm_provider: "openai".into(),
        ..Settings::default()
    })
    .err()
    .map(|error| error.to_string())
    .unwrap_or_default();
    assert!(error.contains("OPENAI_API_KEY"), "{error}");
}

async fn open_stream(llm: &Llm) -> Result<chat_llm::ChunkStream, tonic::Status> {
    let request = chat_common::grpc::request(conversation(), Duration::from_secs(20));
    Ok(llm.complete_stream(request).await?.into_inner())
}

/// Collects a streamed completion: the text, and the final chunk's usage.
async fn collect(
    llm: &Llm,
) -> anyhow::Result<(
    Vec<String>,
    Option<chat_proto::Usage>,
    String,
    Option<tonic::Status>,
)> {
    use futures::StreamExt;
    let mut chunks = open_stream(llm).await?;
    let (mut deltas, mut usage, mut model, mut error) = (Vec::new(), None, String::new(), None);
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) if chunk.usage.is_some() => {
                usage = chunk.usage;
                model = chunk.model;
            }
            Ok(chunk) => deltas.push(chunk.delta),
            Err(status) => {
                error = Some(status);
                break;
            }
        }
    }
    Ok((deltas, usage, model, error))
}

#[tokio::test]
async fn a_streamed_completion_arrives_in_pieces_then_the_provider_usage() -> anyhow::Result<()> {
    let fake = FakeOpenAi::start().await?;
    let (deltas, usage, model, error) = collect(&llm(&fake)?).await?;
    assert!(error.is_none(), "{error:?}");
    assert!(deltas.len() > 1, "{deltas:?}");
    assert_eq!(deltas.concat(), "echo: what is my name?");
    assert_eq!(model, "gpt-test");
    let usage = usage.unwrap_or_default();
    assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
    let sent = &fake.requests()[0];
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    Ok(())
}

#[tokio::test]
async fn a_stream_that_breaks_half_way_ends_in_an_error_after_its_text() -> anyhow::Result<()> {
    let fake = FakeOpenAi::start().await?;
    fake.then([Upstream::BrokenStream {
        text: "one two three four five".into(),
        after_chunks: 2,
    }]);
    let (deltas, usage, _, error) = collect(&llm(&fake)?).await?;
    assert_eq!(deltas.concat(), "one two ");
    assert!(usage.is_none());
    assert_eq!(error.map(|status| status.code()), Some(Code::Unavailable));
    Ok(())
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_upstream_request() -> anyhow::Result<()> {
    use futures::StreamExt;
    let fake = FakeOpenAi::start().await?;
    fake.then([Upstream::Streamed {
        text: "a b c d e f g h i j k l m n o p".into(),
        chunk_delay: Duration::from_millis(100),
    }]);
    let llm = llm(&fake)?;
    let mut chunks = open_stream(&llm).await?;
    let first = chunks.next().await.transpose()?;
    assert_eq!(first.map(|chunk| chunk.delta).as_deref(), Some("a "));
    drop(chunks);
    for _ in 0..50 {
        if fake.cancelled_streams() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        fake.cancelled_streams(),
        1,
        "the provider saw the request cancelled"
    );
    Ok(())
}

#[tokio::test]
async fn the_mock_streams_too() -> anyhow::Result<()> {
    let llm = Llm::new(&Settings {
        mock_chunk_delay_ms: 0,
        ..Settings::default()
    })?;
    let (deltas, usage, model, error) = collect(&llm).await?;
    assert!(error.is_none());
    assert!(deltas.len() > 5);
    assert!(deltas.concat().contains("You said: what is my name?"));
    assert_eq!(model, "mock");
    assert!(usage.is_some_and(|usage| usage.total_tokens > 0));
    Ok(())
}

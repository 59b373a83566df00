//! What the /v1 API adds to a completion: the model asked for, OpenAI's options, tools
//! and tool calls (whole and streamed), the finish reason; against the real
//! async-openai client path and a local server speaking OpenAI's wire format.

mod support;

use std::time::Duration;

use chat_llm::Llm;
use chat_proto::llm_service_server::LlmService;
use chat_proto::{ChatMessage, CompleteChunk, CompleteRequest, Role, ToolCall};
use chat_testing::{FakeOpenAi, Upstream};
use futures::StreamExt;
use serde_json::{Value, json};
use support::llm;
use tonic::Code;

fn message(role: Role, content: &str) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: content.into(),
        ..ChatMessage::default()
    }
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
    }}])
}

fn request(messages: Vec<ChatMessage>) -> CompleteRequest {
    CompleteRequest {
        messages,
        max_tokens: 50,
        user_id: "u1".into(),
        ..CompleteRequest::default()
    }
}

async fn complete(
    llm: &Llm,
    message: CompleteRequest,
) -> Result<chat_proto::CompleteResponse, tonic::Status> {
    let request = chat_common::grpc::request(message, Duration::from_secs(20));
    llm.complete(request).await.map(tonic::Response::into_inner)
}

async fn stream(llm: &Llm, message: CompleteRequest) -> anyhow::Result<Vec<CompleteChunk>> {
    let request = chat_common::grpc::request(message, Duration::from_secs(20));
    let mut chunks = llm.complete_stream(request).await?.into_inner();
    let mut all = Vec::new();
    while let Some(chunk) = chunks.next().await {
        all.push(chunk?);
    }
    Ok(all)
}

#[tokio::test]
async fn every_option_reaches_the_provider_as_openai_names_it() -> anyhow::Result<()> {
    let fake = FakeOpenAi::start().await?;
    let llm = llm(&fake)?;
    let asked = CompleteRequest {
        model: "gpt-other".into(),
        temperature: Some(0.5),
        top_p: Some(0.25),
        stop: vec!["END".into(), "STOP".into()],
        seed: Some(42),
        presence_penalty: Some(0.5),
        frequency_penalty: Some(-0.5),
        parallel_tool_calls: Some(false),
        end_user: "end-user-7".into(),
        response_format_json: json!({"type": "json_object"}).to_string(),
        tools_json: weather_tool().to_string(),
        tool_choice_json: json!("none").to_string(),
        ..request(vec![
            ChatMessage {
                name: "operator".into(),
                ..message(Role::System, "be brief")
            },
            message(Role::User, "weather in Paris?"),
        ])
    };
    let answer = complete(&llm, asked).await?;
    assert_eq!(answer.reply, "echo: weather in Paris?", "tool_choice none");
    assert_eq!(answer.finish_reason, "stop");
    let sent = &fake.requests()[0];
    assert_eq!(sent["model"], "gpt-other");
    assert_eq!(sent["max_completion_tokens"], 50);
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["top_p"], 0.25);
    assert_eq!(sent["stop"], json!(["END", "STOP"]));
    assert_eq!(sent["seed"], 42);
    assert_eq!(sent["presence_penalty"], 0.5);
    assert_eq!(sent["frequency_penalty"], -0.5);
    assert_eq!(sent["parallel_tool_calls"], false);
    assert_eq!(sent["user"], "end-user-7");
    assert_eq!(sent["response_format"], json!({"type": "json_object"}));
    assert_eq!(sent["tools"], weather_tool());
    assert_eq!(sent["tool_choice"], "none");
    assert_eq!(sent["messages"][0]["name"], "operator");

    // Nothing asked, nothing sent: the provider's defaults apply.
    complete(&llm, request(vec![message(Role::User, "hi")])).await?;
    let sent = &fake.requests()[1];
    assert_eq!(sent["model"], "gpt-test", "the configured model");
    for absent in [
        "temperature",
        "top_p",
        "stop",
        "seed",
        "user",
        "tools",
        "tool_choice",
        "response_format",
    ] {
        assert!(sent.get(absent).is_none(), "{absent} in {sent}");
    }
    Ok(())
}

#[tokio::test]
async fn a_tool_call_comes_back_and_its_result_goes_out_again() -> anyhow::Result<()> {
    let fake = FakeOpenAi::start().await?;
    let llm = llm(&fake)?;
    let offered = CompleteRequest {
        tools_json: weather_tool().to_string(),
        ..request(vec![message(Role::User, "weather in Paris?")])
    };
    let answer = complete(&llm, offered).await?;
    assert_eq!(answer.finish_reason, "tool_calls");
    assert_eq!(answer.reply, "");
    assert_eq!(answer.tool_calls.len(), 1);
    let call = &answer.tool_calls[0];
    assert_eq!(call.name, "get_weather");
    assert_eq!(call.id, "call_fake_1");
    let arguments: Value = serde_json::from_str(&call.arguments)?;
    assert_eq!(arguments, json!({"echo": "weather in Paris?"}));
    let usage = answer.usage.unwrap_or_default();
    assert!(usage.completion_tokens > 0);

    // The conversation goes on with the call and its result.
    let answered = CompleteRequest {
        tools_json: weather_tool().to_string(),
        ..request(vec![
            message(Role::User, "weather in Paris?"),
            ChatMessage {
                tool_calls: vec![ToolCall {
                    id: "call_fake_1".into(),
                    name: "get_weather".into(),
                    arguments: call.arguments.clone(),
                }],
                ..message(Role::Assistant, "")
            },
            ChatMessage {
                tool_call_id: "call_fake_1".into(),
                ..message(Role::Tool, "sunny, 21 C")
            },
        ])
    };
    let answer = complete(&llm, answered).await?;
    assert_eq!(answer.reply, "echo: weather in Paris?");
    let sent = &fake.requests()[1];
    let messages = &sent["messages"];
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], Value::Null);
    assert_eq!(messages[1]["tool_calls"][0]["id"], "call_fake_1");
    assert_eq!(messages[1]["tool_calls"][0]["type"], "function");
    assert_eq!(
        messages[1]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(messages[2]["role"], "tool");
    assert_eq!(messages[2]["tool_call_id"], "call_fake_1");
    assert_eq!(messages[2]["content"], "sunny, 21 C");
    Ok(())
}

#[tokio::test]
async fn a_streamed_tool_call_arrives_in_pieces_then_its_finish_reason_and_usage()
-> anyhow::Result<()> {
    let fake = FakeOpenAi::start().await?;
    let llm = llm(&fake)?;
    fake.then([Upstream::ToolCall {
        name: "lookup".into(),
        arguments: r#"{"query":"rust streams"}"#.into(),
    }]);
    let chunks = stream(&llm, request(vec![message(Role::User, "look it up")])).await?;
    let calls: Vec<&chat_proto::ToolCallDelta> =
        chunks.iter().flat_map(|chunk| &chunk.tool_calls).collect();
    assert!(calls.len() > 2, "the arguments come in pieces: {calls:?}");
    assert_eq!(calls[0].id, "call_fake_1");
    assert_eq!(calls[0].name, "lookup");
    assert!(calls.iter().all(|call| call.index == 0));
    let arguments: String = calls.iter().map(|call| call.arguments.as_str()).collect();
    assert_eq!(arguments, r#"{"query":"rust streams"}"#);
    let finish: Vec<&str> = chunks
        .iter()
        .map(|chunk| chunk.finish_reason.as_str())
        .filter(|reason| !reason.is_empty())
        .collect();
    assert_eq!(finish, ["tool_calls"]);
    let last = chunks.last().cloned().unwrap_or_default();
    let usage = last.usage.unwrap_or_default();
    assert!(usage.total_tokens > 0, "the usage comes last: {last:?}");
    assert_eq!(fake.requests()[0]["stream_options"]["include_usage"], true);
    Ok(())
}

#[tokio::test]
async fn a_text_stream_says_why_it_stopped_before_its_usage() -> anyhow::Result<()> {
    let fake = FakeOpenAi::start().await?;
    let chunks = stream(&llm(&fake)?, request(vec![message(Role::User, "hi there")])).await?;
    let text: String = chunks.iter().map(|chunk| chunk.delta.as_str()).collect();
    assert_eq!(text, "echo: hi there");
    let finish_at = chunks
        .iter()
        .position(|chunk| chunk.finish_reason == "stop");
    let usage_at = chunks.iter().position(|chunk| chunk.usage.is_some());
    assert!(
        finish_at.is_some() && usage_at == Some(chunks.len() - 1) && finish_at < usage_at,
        "{chunks:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_malformed_option_or_a_provider_refusal_is_invalid_argument() -> anyhow::Result<()> {
    let fake = FakeOpenAi::start().await?;
    let llm = llm(&fake)?;
    let malformed = CompleteRequest {
        tools_json: json!([{"type": "function", "function": {"description": "no name"}}])
            .to_string(),
        ..request(vec![message(Role::User, "hi")])
    };
    let refused = complete(&llm, malformed).await.err();
    assert_eq!(refused.map(|s| s.code()), Some(Code::InvalidArgument));
    assert!(fake.requests().is_empty(), "never sent");

    let not_json = CompleteRequest {
        response_format_json: "{".into(),
        ..request(vec![message(Role::User, "hi")])
    };
    let refused = complete(&llm, not_json).await.err();
    assert_eq!(refused.map(|s| s.code()), Some(Code::InvalidArgument));

    fake.then([Upstream::BadRequest("Invalid value for 'seed'".into())]);
    let refused = complete(&llm, request(vec![message(Role::User, "hi")]))
        .await
        .err();
    assert_eq!(
        refused.as_ref().map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
    let said = refused.map(|s| s.message().to_owned()).unwrap_or_default();
    assert!(said.contains("Invalid value for 'seed'"), "{said}");
    assert!(!said.contains("sk-test-key"), "{said}");
    Ok(())
}

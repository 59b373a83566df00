//! Retrieval and `GET /search` through the whole stack, with the keyword service running:
//! an earlier fact far outside the recent context reaches the provider's prompt, never
//! another user's or a deleted conversation's, and chats go on with the keyword service
//! gone.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use support::Stack;

async fn stack() -> anyhow::Result<Stack> {
    Stack::start_with_keyword(|_| {}).await
}

/// A chat that must answer 200; its body.
async fn chat_in(
    stack: &Stack,
    user: &str,
    conversation: Option<&str>,
    text: &str,
) -> anyhow::Result<Value> {
    let (status, body) = stack.chat_in(user, conversation, text).await?;
    anyhow::ensure!(status == StatusCode::OK, "chat: {status} {body}");
    Ok(body)
}

/// Waits until the keyword service has indexed a message of `user` containing `needle`.
async fn indexed(stack: &Stack, user: &str, query: &str, needle: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = stack.search(user, query).await?;
        if status == StatusCode::OK
            && body["results"].as_array().is_some_and(|hits| {
                hits.iter()
                    .any(|hit| hit["text"].as_str().unwrap_or("").contains(needle))
            })
        {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{needle:?} was not indexed: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The texts of the hits of a `/search` answer.
fn texts(found: &Value) -> Vec<String> {
    found["results"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|hit| hit["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The text of every message of the provider's last request.
fn last_prompt(stack: &Stack) -> Vec<(String, String)> {
    stack
        .last_provider_messages()
        .iter()
        .map(|message| {
            (
                message["role"].as_str().unwrap_or_default().to_owned(),
                message["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn small_talk(
    stack: &Stack,
    user: &str,
    conversation: &str,
    turns: usize,
) -> anyhow::Result<()> {
    for turn in 0..turns {
        chat_in(
            stack,
            user,
            Some(conversation),
            &format!("Turn {turn}: the weather is mild and I had coffee number {turn}"),
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_fact_sixty_messages_back_reaches_the_prompt_in_english_and_chinese() -> anyhow::Result<()>
{
    let stack = stack().await?;
    let first = chat_in(&stack, "u1", None, "My dog's name is Biscuit.").await?;
    let conversation = first["conversation_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    chat_in(&stack, "u1", Some(&conversation), "我的猫叫豆豆").await?;
    small_talk(&stack, "u1", &conversation, 30).await?;
    indexed(&stack, "u1", "Biscuit", "Biscuit").await?;
    indexed(&stack, "u1", "豆豆", "豆豆").await?;

    chat_in(&stack, "u1", Some(&conversation), "What is my dog's name?").await?;
    let prompt = last_prompt(&stack);
    let retrieved: Vec<&(String, String)> = prompt
        .iter()
        .filter(|(role, text)| role == "system" && text.contains("retrieved"))
        .collect();
    assert_eq!(retrieved.len(), 1, "{prompt:#?}");
    assert!(
        retrieved[0].1.contains("My dog's name is Biscuit."),
        "{prompt:#?}"
    );
    // The fact is not in the recent context: only retrieval brought it.
    assert!(
        prompt
            .iter()
            .filter(|(role, _)| role != "system")
            .all(|(_, text)| !text.contains("Biscuit.")),
        "{prompt:#?}"
    );

    chat_in(&stack, "u1", Some(&conversation), "我的猫叫什么名字？").await?;
    let prompt = last_prompt(&stack);
    assert!(
        prompt
            .iter()
            .any(|(role, text)| role == "system" && text.contains("我的猫叫豆豆")),
        "{prompt:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn calibration_compares_the_providers_count_with_the_prompt_sent() -> anyhow::Result<()> {
    // The reservation holds room for retrieved context before the search answers; the
    // settlement then says what the prompt sent came to, retrieved block included, so a
    // provider counting exactly twice ours calibrates to exactly 2, not more.
    let stack = Stack::start_with_keyword(|settings| settings.gateway.context_messages = 2).await?;
    stack.provider.count_prompts_times(2.0);
    let model = "gpt-test"; // the test stack's model
    chat_in(&stack, "u1", None, "My dog's name is Biscuit.").await?;
    chat_in(&stack, "u1", None, "The weather is mild today.").await?;
    chat_in(&stack, "u1", None, "I had coffee this morning.").await?;
    indexed(&stack, "u1", "Biscuit", "Biscuit").await?;
    assert_eq!(stack.calibration(model).await?, Some(2.0));

    chat_in(&stack, "u1", None, "What is my dog's name?").await?;
    let prompt = last_prompt(&stack);
    assert!(
        prompt.iter().any(|(role, text)| role == "system"
            && text.contains("retrieved")
            && text.contains("Biscuit")),
        "{prompt:#?}"
    );
    assert_eq!(stack.calibration(model).await?, Some(2.0));
    Ok(())
}

#[tokio::test]
async fn another_users_and_deleted_messages_are_never_retrieved() -> anyhow::Result<()> {
    let stack = stack().await?;
    chat_in(&stack, "bob", None, "My dog's name is Rex.").await?;
    let old = chat_in(&stack, "alice", None, "My dog's name is Biscuit.").await?;
    let old_conversation = old["conversation_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    indexed(&stack, "bob", "Rex", "Rex").await?;
    indexed(&stack, "alice", "Biscuit", "Biscuit").await?;

    let (_, found) = stack.search("alice", "Rex dog").await?;
    assert!(
        texts(&found).iter().all(|text| !text.contains("Rex")),
        "{found}"
    );

    let deleted = stack
        .http
        .delete(stack.url(&format!("/conversations/{old_conversation}")))
        .query(&[("user_id", "alice")])
        .send()
        .await?;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let fresh = stack
        .http
        .post(stack.url("/conversations"))
        .query(&[("user_id", "alice")])
        .json(&serde_json::json!({}))
        .send()
        .await?;
    let fresh: Value = fresh.json().await?;
    chat_in(
        &stack,
        "alice",
        fresh["id"].as_str(),
        "What is my dog's name?",
    )
    .await?;
    let prompt = last_prompt(&stack);
    assert!(
        prompt
            .iter()
            .all(|(_, text)| !text.contains("Rex") && !text.contains("Biscuit")),
        "{prompt:#?}"
    );
    let (_, found) = stack.search("alice", "Biscuit").await?;
    assert_eq!(found["results"], serde_json::json!([]), "{found}");
    Ok(())
}

#[tokio::test]
async fn search_answers_the_callers_matches_with_highlights() -> anyhow::Result<()> {
    let stack = stack().await?;
    chat_in(&stack, "u1", None, "Deploying the gateway on Kubernetes").await?;
    indexed(&stack, "u1", "kubernetes", "Kubernetes").await?;
    let (status, body) = stack.search("u1", "kubernetes gateway").await?;
    assert_eq!(status, StatusCode::OK);
    let hit = &body["results"][0];
    assert_eq!(hit["role"], "user");
    assert!(
        hit["conversation_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    let text: Vec<char> = hit["text"].as_str().unwrap_or_default().chars().collect();
    let marked: Vec<String> = hit["highlights"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|range| {
            let at = |index: usize| range[index].as_u64().unwrap_or_default() as usize;
            text[at(0)..at(1)].iter().collect()
        })
        .collect();
    assert_eq!(marked, ["gateway", "Kubernetes"]);

    for query in ["", "the of"] {
        let (status, body) = stack.search("u1", query).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query:?}: {body}");
        assert_eq!(body["code"], "invalid_field", "{body}");
    }
    Ok(())
}

#[tokio::test]
async fn chats_go_on_without_the_keyword_service() -> anyhow::Result<()> {
    // A keyword address where nothing listens: every retrieval fails.
    let stack = Stack::start_with(|settings| {
        settings.gateway.keyword_addr = "http://127.0.0.1:9".to_owned();
    })
    .await?;
    for text in ["My dog's name is Biscuit.", "What is my dog's name?"] {
        let (status, body) = stack.chat("u1", text).await?;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = stack.search("u1", "dog").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["service"], "keyword", "{body}");
    Ok(())
}

#[tokio::test]
async fn the_conversation_scope_keeps_each_conversations_past_to_itself() -> anyhow::Result<()> {
    let stack = Stack::start_with(|settings| {
        settings.with_keyword();
        settings.token.daily_limit = 10_000_000;
        settings.gateway.retrieval_scope = chat_gateway::RetrievalScope::Conversation;
    })
    .await?;
    let first = chat_in(&stack, "u1", None, "My dog's name is Biscuit.").await?;
    let first = first["conversation_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    small_talk(&stack, "u1", &first, 12).await?;
    indexed(&stack, "u1", "Biscuit", "Biscuit").await?;

    let other = stack
        .http
        .post(stack.url("/conversations"))
        .query(&[("user_id", "u1")])
        .json(&serde_json::json!({}))
        .send()
        .await?
        .json::<Value>()
        .await?;
    chat_in(&stack, "u1", other["id"].as_str(), "What is my dog's name?").await?;
    assert!(
        last_prompt(&stack)
            .iter()
            .all(|(_, text)| !text.contains("Biscuit")),
        "{:#?}",
        last_prompt(&stack)
    );
    chat_in(&stack, "u1", Some(&first), "What is my dog's name?").await?;
    assert!(
        last_prompt(&stack)
            .iter()
            .any(|(role, text)| role == "system" && text.contains("My dog's name is Biscuit.")),
        "{:#?}",
        last_prompt(&stack)
    );
    Ok(())
}

//! Conversations end to end: every service in-process, real Redis and MySQL, and a real
//! HTTP server speaking OpenAI's wire format as the provider (which records what it was
//! sent, so a test sees the exact context of each conversation).

mod support;

use mysql_async::prelude::Queryable;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::Stack;

/// A call as `user` (trust mode: `?user_id=` names them); answers status and JSON.
async fn call(
    stack: &Stack,
    method: Method,
    path: &str,
    user: &str,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut request = stack.http.request(
        method,
        stack.url(&format!("{path}{separator}user_id={user}")),
    );
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

async fn new_conversation(stack: &Stack, user: &str) -> anyhow::Result<String> {
    let (status, created) =
        call(stack, Method::POST, "/conversations", user, Some(json!({}))).await?;
    anyhow::ensure!(status == StatusCode::CREATED, "{status} {created}");
    Ok(created["id"].as_str().unwrap_or_default().to_owned())
}

/// The conversation a chat's answer names ("" without one).
fn conversation_of(answer: &Value) -> String {
    answer["conversation_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The contents of the messages the provider was sent in its latest request.
fn last_prompt(stack: &Stack) -> Vec<String> {
    stack
        .last_provider_messages()
        .iter()
        .filter_map(|message| message["content"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn two_conversations_never_see_each_others_context_at_the_provider() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (ada, bob) = (
        new_conversation(&stack, "u1").await?,
        new_conversation(&stack, "u1").await?,
    );
    let (status, body) = stack.chat_in("u1", Some(&ada), "my name is Ada").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["conversation_id"],
        ada.as_str(),
        "the response says where it went"
    );
    stack.chat_in("u1", Some(&bob), "my name is Bob").await?;

    let (_, body) = stack.chat_in("u1", Some(&ada), "what is my name?").await?;
    assert_eq!(body["conversation_id"], ada.as_str());
    assert_eq!(
        last_prompt(&stack),
        ["my name is Ada", "echo: my name is Ada", "what is my name?"]
    );
    stack.chat_in("u1", Some(&bob), "and mine?").await?;
    assert_eq!(
        last_prompt(&stack),
        ["my name is Bob", "echo: my name is Bob", "and mine?"]
    );
    for request in stack.provider.requests() {
        let sent = request["messages"].to_string();
        assert!(
            !(sent.contains("Ada") && sent.contains("Bob")),
            "one prompt held both conversations: {sent}"
        );
    }
    // Each conversation lists its own messages; /history keeps the original's shape
    // across all of them.
    let (_, page) = call(
        &stack,
        Method::GET,
        &format!("/conversations/{bob}/messages"),
        "u1",
        None,
    )
    .await?;
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|message| message["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "my name is Bob",
            "echo: my name is Bob",
            "and mine?",
            "echo: and mine?"
        ]
    );
    assert_eq!(page["next_cursor"], Value::Null);
    assert_eq!(stack.history("u1").await?.len(), 8);
    Ok(())
}

#[tokio::test]
async fn a_chat_without_a_conversation_continues_the_most_recent_one() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (status, first) = stack.chat("u1", "remember the number 42").await?;
    assert_eq!(status, StatusCode::OK, "{first}");
    let opened = conversation_of(&first);
    assert_eq!(opened.len(), 36, "{first}");
    let (_, second) = stack.chat("u1", "which number?").await?;
    assert_eq!(second["conversation_id"], opened.as_str());
    assert_eq!(
        last_prompt(&stack),
        [
            "remember the number 42",
            "echo: remember the number 42",
            "which number?"
        ],
        "the original's clients keep their context"
    );
    let (_, listed) = call(&stack, Method::GET, "/conversations", "u1", None).await?;
    assert_eq!(
        listed["conversations"][0]["title"],
        "remember the number 42"
    );
    assert_eq!(listed["conversations"][0]["message_count"], 4);

    // A new conversation is the most recent: the next chat goes there, without context.
    let fresh = new_conversation(&stack, "u1").await?;
    let (_, third) = stack.chat("u1", "a new topic").await?;
    assert_eq!(third["conversation_id"], fresh.as_str());
    assert_eq!(last_prompt(&stack), ["a new topic"]);

    // The stream's first event says where the turn goes.
    let response = stack
        .http
        .post(stack.url("/chat/stream"))
        .json(&json!({"user_id": "u1", "text": "streamed", "conversation_id": opened}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await?;
    let start = text
        .lines()
        .skip_while(|line| *line != "event: start")
        .find_map(|line| line.strip_prefix("data: "))
        .map(serde_json::from_str::<Value>)
        .transpose()?
        .unwrap_or_default();
    assert_eq!(start["conversation_id"], opened.as_str(), "{text}");
    stack.ensure_the_provider_streamed()?;
    assert_eq!(
        last_prompt(&stack),
        [
            "remember the number 42",
            "echo: remember the number 42",
            "which number?",
            "echo: which number?",
            "streamed"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_deleted_conversation_leaves_mysql_and_the_cache_and_then_is_404() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let doomed = new_conversation(&stack, "u1").await?;
    stack.chat_in("u1", Some(&doomed), "secret one").await?;
    // The second chat reads the first as context: the conversation's cache is filled.
    stack.chat_in("u1", Some(&doomed), "secret two").await?;
    let kept = new_conversation(&stack, "u1").await?;
    stack.chat_in("u1", Some(&kept), "keep this").await?;
    stack.history("u1").await?;
    let keys = stack.redis_keys().await?;
    assert!(keys.iter().any(|key| key.contains(&doomed)), "{keys:?}");

    let path = format!("/conversations/{doomed}");
    let (status, _) = call(&stack, Method::DELETE, &path, "u1", None).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let mut mysql = stack.mysql().await?;
    let rows: Option<i64> = mysql
        .exec_first(
            "SELECT (SELECT COUNT(*) FROM chat_history WHERE conversation_id = ?)
                  + (SELECT COUNT(*) FROM conversations WHERE id = ?)",
            (&doomed, &doomed),
        )
        .await?;
    assert_eq!(rows, Some(0));
    let keys = stack.redis_keys().await?;
    assert!(!keys.iter().any(|key| key.contains(&doomed)), "{keys:?}");

    for (method, path) in [
        (Method::GET, path.clone()),
        (Method::GET, format!("{path}/messages")),
        (Method::DELETE, path.clone()),
    ] {
        let (status, body) = call(&stack, method.clone(), &path, "u1", None).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert_eq!(body["code"], "not_found");
    }
    let before = stack.provider.requests().len();
    let (status, body) = stack.chat_in("u1", Some(&doomed), "back?").await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    assert_eq!(
        stack.provider.requests().len(),
        before,
        "a 404 never reaches the model"
    );
    assert!(stack.remaining("u1").await? > 0);
    assert_eq!(
        stack.history_texts("u1").await?,
        ["keep this", "echo: keep this"],
        "gone from /history too"
    );
    Ok(())
}

/// MySQL lost the user's latest conversation (its data reset or restored from an older
/// backup) while Redis still points at it and caches its messages: the next chat that
/// names no conversation is still saved, in a new one, and the chats after it go there.
#[tokio::test]
async fn a_latest_conversation_mysql_lost_is_replaced_not_saved_into() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, first) = stack.chat("u1", "before the reset").await?;
    let lost = conversation_of(&first);
    // The second chat reads the first as context: the pointer and the list are cached.
    stack.chat("u1", "still before").await?;
    let mut mysql = stack.mysql().await?;
    mysql
        .exec_drop(
            "DELETE FROM chat_history WHERE conversation_id = ?",
            (&lost,),
        )
        .await?;
    mysql
        .exec_drop("DELETE FROM conversations WHERE id = ?", (&lost,))
        .await?;
    assert!(
        stack
            .redis_keys()
            .await?
            .iter()
            .any(|key| key.contains(&lost))
    );

    let (status, after) = stack.chat("u1", "after the reset").await?;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["history_saved"], true, "{after}");
    let replacement = conversation_of(&after);
    assert_eq!(replacement.len(), 36, "{after}");
    assert_ne!(replacement, lost);
    let (_, next) = stack.chat("u1", "and then").await?;
    assert_eq!(next["conversation_id"], replacement.as_str(), "{next}");
    assert_eq!(
        last_prompt(&stack),
        ["after the reset", "echo: after the reset", "and then"],
        "the lost conversation's cached messages are not context any more"
    );
    Ok(())
}

#[tokio::test]
async fn erasing_all_leaves_nothing_of_the_users_messages_in_mysql_or_redis() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    for _ in 0..2 {
        let id = new_conversation(&stack, "u1").await?;
        stack.chat_in("u1", Some(&id), "private words").await?;
        stack.chat_in("u1", Some(&id), "more private words").await?;
    }
    stack.chat("u2", "someone else").await?;
    stack.history("u1").await?;
    stack.history("u2").await?;
    let spent = stack.remaining("u1").await?;

    let (status, _) = call(&stack, Method::DELETE, "/history", "u1", None).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let mut mysql = stack.mysql().await?;
    for table in ["chat_history", "conversations"] {
        let counts: Vec<(String, i64)> = mysql
            .query(format!(
                "SELECT user_id, COUNT(*) FROM {table} GROUP BY user_id"
            ))
            .await?;
        assert_eq!(
            counts,
            [(
                "u2".to_owned(),
                if table == "conversations" { 1 } else { 2 }
            )],
            "{table}"
        );
    }
    // Only the day's quota (and rate) counters may still name u1: erasing them would
    // hand out free tokens.
    let keys = stack.redis_keys().await?;
    let left: Vec<&String> = keys.iter().filter(|key| key.contains("u1")).collect();
    assert!(
        left.iter()
            .all(|key| key.starts_with("token:") || key.starts_with("ratelimit:")),
        "{left:?}"
    );
    assert!(
        keys.iter()
            .any(|key| key.contains("history") && key.contains("u2")),
        "{keys:?}"
    );
    assert!(stack.history("u1").await?.is_empty());
    let (_, listed) = call(&stack, Method::GET, "/conversations", "u1", None).await?;
    assert_eq!(listed, json!({"conversations": [], "next_cursor": null}));
    assert_eq!(
        stack.remaining("u1").await?,
        spent,
        "the quota is not reset"
    );
    assert_eq!(stack.history("u2").await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn another_users_conversation_is_404_and_never_shows_its_content() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, body) = stack.chat("alice", "alice's secret plan").await?;
    let theirs = conversation_of(&body);
    let path = format!("/conversations/{theirs}");
    let before = stack.provider.requests().len();
    let cases = [
        (Method::GET, path.clone(), None),
        (Method::GET, format!("{path}/messages"), None),
        (
            Method::PATCH,
            path.clone(),
            Some(json!({"title": "mine now"})),
        ),
        (Method::DELETE, path.clone(), None),
        (Method::GET, "/conversations/not-a-uuid".to_owned(), None),
        (
            Method::GET,
            "/conversations/not-a-uuid/messages".to_owned(),
            None,
        ),
    ];
    for (method, path, body) in cases {
        let (status, answer) = call(&stack, method.clone(), &path, "bob", body).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {answer}");
        assert_eq!(answer["code"], "not_found");
        assert!(!answer.to_string().contains("secret"), "{answer}");
    }
    let (status, answer) = stack.chat_in("bob", Some(&theirs), "let me in").await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert_eq!(
        stack.provider.requests().len(),
        before,
        "bob never reached the model"
    );
    let (_, listed) = call(&stack, Method::GET, "/conversations", "bob", None).await?;
    assert_eq!(listed["conversations"], json!([]));
    // Alice's conversation is as she left it.
    let (status, mine) = call(&stack, Method::GET, &path, "alice", None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mine["title"], "alice's secret plan");
    assert_eq!(mine["message_count"], 2);
    Ok(())
}

#[tokio::test]
async fn pages_of_messages_hold_every_message_exactly_once() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let id = new_conversation(&stack, "u1").await?;
    for i in 0..7 {
        stack
            .chat_in("u1", Some(&id), &format!("question {i}"))
            .await?;
    }
    let path = format!("/conversations/{id}/messages");
    let (_, everything) = call(&stack, Method::GET, &path, "u1", None).await?;
    let all: Vec<Value> = everything["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(all.len(), 14);
    assert_eq!(all[0]["text"], "question 0");
    assert_eq!(all[0]["role"], "user");
    assert_eq!(all[13]["role"], "assistant");
    assert_eq!(all[13]["incomplete"], false);
    assert!(
        all.windows(2)
            .all(|pair| pair[0]["id"].as_i64() < pair[1]["id"].as_i64())
    );
    for limit in [1, 3, 5] {
        let (mut seen, mut cursor) = (Vec::new(), None::<String>);
        loop {
            let page_path = match &cursor {
                Some(cursor) => format!("{path}?limit={limit}&cursor={cursor}"),
                None => format!("{path}?limit={limit}"),
            };
            let (status, page) = call(&stack, Method::GET, &page_path, "u1", None).await?;
            assert_eq!(status, StatusCode::OK, "{page}");
            let messages = page["messages"].as_array().cloned().unwrap_or_default();
            assert!(messages.len() <= limit);
            seen.extend(messages);
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, all, "limit {limit}: every message once, in order");
    }
    let (status, bad) = call(
        &stack,
        Method::GET,
        &format!("{path}?cursor=nonsense"),
        "u1",
        None,
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    Ok(())
}

#[tokio::test]
async fn titles_come_from_the_first_message_and_can_be_renamed() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (status, created) = call(
        &stack,
        Method::POST,
        "/conversations",
        "u1",
        Some(json!({"title": "  Trip plans "})),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["title"], "Trip plans");
    assert_eq!(created["message_count"], 0);
    for field in ["created_at_ms", "updated_at_ms"] {
        assert!(
            created[field].as_i64() > Some(1_600_000_000_000),
            "{created}"
        );
    }
    let long =
        "Could you please compare the train and the ferry from Helsinki to Tallinn in winter";
    let (_, chatted) = stack.chat("u1", long).await?;
    let id = conversation_of(&chatted);
    assert_eq!(
        id,
        created["id"].as_str().unwrap_or_default(),
        "the newest one"
    );
    let (_, got) = call(
        &stack,
        Method::GET,
        &format!("/conversations/{id}"),
        "u1",
        None,
    )
    .await?;
    assert_eq!(got["title"], "Trip plans", "a title given stays");

    let untitled = new_conversation(&stack, "u1").await?;
    stack.chat_in("u1", Some(&untitled), long).await?;
    let path = format!("/conversations/{untitled}");
    let (_, got) = call(&stack, Method::GET, &path, "u1", None).await?;
    assert_eq!(
        got["title"],
        "Could you please compare the train and the ferry from…"
    );
    let (status, renamed) = call(
        &stack,
        Method::PATCH,
        &path,
        "u1",
        Some(json!({"title": "Ferry"})),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(renamed["title"], "Ferry");
    for body in [
        json!({"title": "   "}),
        json!({"title": "x".repeat(121)}),
        json!({}),
    ] {
        let (status, refused) =
            call(&stack, Method::PATCH, &path, "u1", Some(body.clone())).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {refused}");
        assert!(refused["code"].is_string(), "{refused}");
    }
    let (_, listed) = call(&stack, Method::GET, "/conversations?limit=1", "u1", None).await?;
    assert_eq!(listed["conversations"][0]["title"], "Ferry");
    let cursor = listed["next_cursor"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (_, rest) = call(
        &stack,
        Method::GET,
        &format!("/conversations?limit=1&cursor={cursor}"),
        "u1",
        None,
    )
    .await?;
    assert_eq!(rest["conversations"][0]["title"], "Trip plans");
    assert_eq!(rest["next_cursor"], Value::Null);
    Ok(())
}

#[tokio::test]
async fn with_authentication_the_routes_take_a_key_and_refuse_foreign_origins() -> anyhow::Result<()>
{
    const ADMIN: &str = "test-admin-key";
    let stack = Stack::start_with(|settings| {
        settings.gateway.auth_mode = chat_gateway::AuthMode::Required;
        settings.gateway.admin_api_key = Some(ADMIN.to_owned().into());
        settings.gateway.admin_password = Some("first-admin-password".to_owned().into());
    })
    .await?;
    let admin = |method: Method, path: &str, body: Value| {
        stack
            .http
            .request(method, stack.url(path))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
    };
    admin(Method::POST, "/admin/users", json!({"user_id": "carol"})).await?;
    let key: Value = admin(
        Method::POST,
        "/admin/users/carol/keys",
        json!({"name": "t"}),
    )
    .await?
    .json()
    .await?;
    let key = key["key"].as_str().unwrap_or_default().to_owned();

    let anonymous = stack.http.get(stack.url("/conversations")).send().await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let created = stack
        .http
        .post(stack.url("/conversations"))
        .bearer_auth(&key)
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(created.status(), StatusCode::CREATED);
    let named = stack
        .http
        .get(stack.url("/conversations?user_id=someone-else"))
        .bearer_auth(&key)
        .send()
        .await?;
    assert_eq!(named.status(), StatusCode::FORBIDDEN);
    let foreign = stack
        .http
        .delete(stack.url("/history"))
        .bearer_auth(&key)
        .header("origin", "https://evil.example")
        .send()
        .await?;
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    assert!(foreign.headers().contains_key("content-security-policy"));
    let listed: Value = stack
        .http
        .get(stack.url("/conversations"))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        listed["conversations"].as_array().map(Vec::len),
        Some(1),
        "not erased"
    );
    Ok(())
}

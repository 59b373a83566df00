//! Every caller is someone (`AUTH_MODE=required`): API keys, sessions, the admin API,
//! and each caller seeing and spending only their own, over the real stack.

mod support;

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::Stack;
use tokio::net::TcpListener;

const ADMIN: &str = "test-admin-key";
const PASSWORD: &str = "correct horse battery";

async fn stack_with(
    adjust: impl FnOnce(&mut chat_testing::stack::Settings),
) -> anyhow::Result<Stack> {
    Stack::start_with_auth(ADMIN, adjust).await
}

/// A request with an optional bearer key or session cookie; answers status and JSON.
async fn call(
    stack: &Stack,
    method: Method,
    path: &str,
    credential: &Credential,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    let mut request = stack.http.request(method, stack.url(path));
    request = match credential {
        Credential::None => request,
        Credential::Key(key) => request.bearer_auth(key),
        Credential::Session(cookie) => request.header(COOKIE, cookie),
    };
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status();
    let text = response.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

#[derive(Clone)]
enum Credential {
    None,
    Key(String),
    Session(String),
}

async fn admin(
    stack: &Stack,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    call(
        stack,
        method,
        path,
        &Credential::Key(ADMIN.to_owned()),
        body,
    )
    .await
}

/// Creates `user_id` with a password and a key; answers the key.
async fn user_with_key(stack: &Stack, user_id: &str) -> anyhow::Result<String> {
    let (status, user) = admin(
        stack,
        Method::POST,
        "/admin/users",
        Some(json!({"user_id": user_id, "password": PASSWORD})),
    )
    .await?;
    anyhow::ensure!(status == StatusCode::CREATED, "{status} {user}");
    let (status, key) = admin(
        stack,
        Method::POST,
        &format!("/admin/users/{user_id}/keys"),
        Some(json!({"name": "test"})),
    )
    .await?;
    anyhow::ensure!(status == StatusCode::CREATED, "{status} {key}");
    Ok(key["key"].as_str().unwrap_or_default().to_owned())
}

/// Logs in; answers the `Cookie` header value of the session.
async fn login(
    stack: &Stack,
    user_id: &str,
    password: &str,
) -> anyhow::Result<(StatusCode, Option<String>)> {
    let response = stack
        .http
        .post(stack.url("/auth/login"))
        .json(&json!({"user_id": user_id, "password": password}))
        .send()
        .await?;
    let status = response.status();
    let cookie = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    if let Some(cookie) = &cookie {
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
    }
    Ok((
        status,
        cookie.and_then(|c| c.split(';').next().map(str::to_owned)),
    ))
}

/// The routes of a caller, each with the body or query naming `user_id` when given.
fn routes(user_id: Option<&str>) -> Vec<(Method, String, Option<Value>)> {
    let query = user_id
        .map(|id| format!("?user_id={id}"))
        .unwrap_or_default();
    let mut body = json!({"text": "hello"});
    if let Some(id) = user_id {
        body["user_id"] = id.into();
    }
    vec![
        (Method::POST, "/chat".to_owned(), Some(body.clone())),
        (Method::POST, "/chat/stream".to_owned(), Some(body)),
        (Method::GET, format!("/history{query}"), None),
        (Method::GET, format!("/quota{query}"), None),
    ]
}

#[tokio::test]
async fn every_route_answers_each_kind_of_caller() -> anyhow::Result<()> {
    let stack = stack_with(|_| {}).await?;
    let alice = user_with_key(&stack, "alice").await?;
    let bob = user_with_key(&stack, "bob").await?;
    let carol = user_with_key(&stack, "carol").await?;
    let revoked = user_with_key(&stack, "dave").await?;
    let (_, keys) = admin(&stack, Method::GET, "/admin/users/dave/keys", None).await?;
    let dave_key_id = keys["keys"][0]["key_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !keys.to_string().contains(&revoked),
        "a listed key shows no secret"
    );
    let (status, _) = admin(
        &stack,
        Method::DELETE,
        &format!("/admin/keys/{dave_key_id}"),
        None,
    )
    .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = admin(
        &stack,
        Method::PATCH,
        "/admin/users/carol",
        Some(json!({"disabled": true})),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    let (status, session) = login(&stack, "alice", PASSWORD).await?;
    assert_eq!(status, StatusCode::OK);
    let session = session.unwrap_or_default();

    let cases = [
        (Credential::None, None, 401, "unauthorized"),
        (
            Credential::Key(bob.clone()),
            Some("alice"),
            403,
            "forbidden",
        ),
        (Credential::Key(revoked), None, 401, "unauthorized"),
        (Credential::Key(carol), None, 401, "unauthorized"),
        (
            Credential::Key("sk-chat-nosuchkey00-xyz".to_owned()),
            None,
            401,
            "unauthorized",
        ),
        (Credential::Key(alice.clone()), None, 200, ""),
        (Credential::Key(alice.clone()), Some("alice"), 200, ""),
        (Credential::Session(session), None, 200, ""),
    ];
    for (credential, named, status, error) in cases {
        for (method, path, body) in routes(named) {
            let (got, answer) = call(&stack, method.clone(), &path, &credential, body).await?;
            assert_eq!(got.as_u16(), status, "{method} {path}: {answer}");
            if !error.is_empty() {
                assert_eq!(answer["error"], error, "{method} {path}");
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn one_user_never_reads_lists_or_spends_anothers() -> anyhow::Result<()> {
    let stack = stack_with(|_| {}).await?;
    let alice = Credential::Key(user_with_key(&stack, "alice").await?);
    let bob = Credential::Key(user_with_key(&stack, "bob").await?);
    let (status, _) = call(
        &stack,
        Method::POST,
        "/chat",
        &alice,
        Some(json!({"text": "alice's secret plan"})),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    let (_, bobs) = call(&stack, Method::GET, "/history", &bob, None).await?;
    assert_eq!(bobs, json!([]), "bob sees none of alice's history");
    for path in ["/history?user_id=alice", "/quota?user_id=alice"] {
        let (status, _) = call(&stack, Method::GET, path, &bob, None).await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let (status, _) = call(
        &stack,
        Method::POST,
        "/chat",
        &bob,
        Some(json!({"user_id": "alice", "text": "hi"})),
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, alice_quota) = call(&stack, Method::GET, "/quota", &alice, None).await?;
    let (_, bob_quota) = call(&stack, Method::GET, "/quota", &bob, None).await?;
    assert!(
        alice_quota["remaining"].as_i64() < bob_quota["remaining"].as_i64(),
        "{alice_quota} {bob_quota}"
    );
    assert_eq!(
        bob_quota["remaining"], bob_quota["limit"],
        "bob spent nothing"
    );
    let (_, history) = call(&stack, Method::GET, "/history", &alice, None).await?;
    assert_eq!(history[0]["text"], "alice's secret plan");
    Ok(())
}

#[tokio::test]
async fn a_key_revoked_on_one_gateway_fails_on_another_within_the_cache_lifetime()
-> anyhow::Result<()> {
    let mut second = None;
    let stack = stack_with(|settings| {
        settings.gateway.auth_cache_ttl_ms = 1000;
        second = Some(settings.gateway.clone());
    })
    .await?;
    let Some(second) = second else {
        anyhow::bail!("no gateway settings");
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let other = format!("http://{}", listener.local_addr()?);
    tokio::spawn(chat_gateway::run(second, listener, std::future::pending()));
    let key = user_with_key(&stack, "alice").await?;
    let quota = |base: String| {
        let (http, key) = (stack.http.clone(), key.clone());
        async move {
            let response = http
                .get(format!("{base}/quota"))
                .bearer_auth(key)
                .send()
                .await?;
            anyhow::Ok(response.status())
        }
    };
    // Both gateways know the key (and cache it).
    let mut ready = false;
    for _ in 0..100 {
        if quota(other.clone()).await.ok() == Some(StatusCode::OK) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the second gateway answers");
    assert_eq!(quota(stack.base.clone()).await?, StatusCode::OK);

    let (_, keys) = admin(&stack, Method::GET, "/admin/users/alice/keys", None).await?;
    let key_id = keys["keys"][0]["key_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (status, _) = admin(
        &stack,
        Method::DELETE,
        &format!("/admin/keys/{key_id}"),
        None,
    )
    .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let revoked_at = std::time::Instant::now();
    loop {
        if quota(other.clone()).await? == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(3),
            "still accepted after the cache lifetime"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, keys) = admin(&stack, Method::GET, "/admin/users/alice/keys", None).await?;
    assert_eq!(keys["keys"][0]["revoked"], true, "{keys}");
    Ok(())
}

#[tokio::test]
async fn login_logout_expiry_and_wrong_passwords() -> anyhow::Result<()> {
    let stack = stack_with(|settings| {
        settings.history.session_ttl_seconds = 2;
        settings.gateway.auth_cache_ttl_ms = 200;
    })
    .await?;
    user_with_key(&stack, "alice").await?;
    let (wrong, _) = login(&stack, "alice", "not the password").await?;
    let (unknown, _) = login(&stack, "nobody", "not the password").await?;
    assert_eq!(
        (wrong, unknown),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );

    let (status, session) = login(&stack, "alice", PASSWORD).await?;
    assert_eq!(status, StatusCode::OK);
    let session = Credential::Session(session.unwrap_or_default());
    let (status, me) = call(&stack, Method::GET, "/auth/me", &session, None).await?;
    assert_eq!(
        (status, me["user_id"].as_str()),
        (StatusCode::OK, Some("alice"))
    );
    let (status, _) = call(
        &stack,
        Method::POST,
        "/auth/logout",
        &session,
        Some(json!({})),
    )
    .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(&stack, Method::GET, "/auth/me", &session, None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "logged out");

    let (_, session) = login(&stack, "alice", PASSWORD).await?;
    let session = Credential::Session(session.unwrap_or_default());
    assert_eq!(
        call(&stack, Method::GET, "/history", &session, None)
            .await?
            .0,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(
        call(&stack, Method::GET, "/history", &session, None)
            .await?
            .0,
        StatusCode::UNAUTHORIZED,
        "expired"
    );
    Ok(())
}

#[tokio::test]
async fn cross_origin_and_text_plain_posts_are_refused() -> anyhow::Result<()> {
    let stack = stack_with(|_| {}).await?;
    let key = user_with_key(&stack, "alice").await?;
    let body = json!({"text": "hello"}).to_string();
    let post = |content_type: &'static str, origin: Option<String>| {
        let mut request = stack
            .http
            .post(stack.url("/chat"))
            .bearer_auth(&key)
            .header(CONTENT_TYPE, content_type)
            .body(body.clone());
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    assert_eq!(
        post("text/plain", None).await?.status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let evil = post("application/json", Some("https://evil.example".to_owned())).await?;
    assert_eq!(evil.status(), StatusCode::FORBIDDEN);
    assert_eq!(evil.json::<Value>().await?["error"], "forbidden");
    let own = post("application/json", Some(stack.base.clone())).await?;
    assert_eq!(own.status(), StatusCode::OK);
    let page = stack.http.get(stack.url("/")).send().await?;
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(
        page.headers()
            .get("x-content-type-options")
            .map(|v| v.as_bytes()),
        Some(&b"nosniff"[..])
    );
    assert!(page.headers().contains_key("referrer-policy"));
    Ok(())
}

#[tokio::test]
async fn the_admin_api_takes_only_the_admin_key_and_says_what_is_wrong() -> anyhow::Result<()> {
    let stack = stack_with(|_| {}).await?;
    let alice = user_with_key(&stack, "alice").await?;
    let body = Some(json!({"user_id": "mallory"}));
    for credential in [
        Credential::None,
        Credential::Key("wrong".to_owned()),
        Credential::Key(alice),
    ] {
        let (status, _) = call(
            &stack,
            Method::POST,
            "/admin/users",
            &credential,
            body.clone(),
        )
        .await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _) = admin(
        &stack,
        Method::POST,
        "/admin/users",
        Some(json!({"user_id": "alice"})),
    )
    .await?;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = admin(
        &stack,
        Method::POST,
        "/admin/users",
        Some(json!({"user_id": "bad id"})),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = admin(&stack, Method::GET, "/admin/users/nobody", None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, user) = admin(
        &stack,
        Method::POST,
        "/admin/users",
        Some(json!({"user_id": "erin", "daily_limit": 1234, "rate_limit_per_minute": 30})),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let (status, user) = admin(&stack, Method::GET, "/admin/users/erin", None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            user["daily_limit"].as_i64(),
            user["usage_today"]["limit"].as_i64()
        ),
        (Some(1234), Some(1234)),
        "{user}"
    );
    let (_, key) = admin(
        &stack,
        Method::POST,
        "/admin/users/erin/keys",
        Some(json!({"name": "ci"})),
    )
    .await?;
    let erin = Credential::Key(key["key"].as_str().unwrap_or_default().to_owned());
    assert!(
        key["prefix"]
            .as_str()
            .is_some_and(|prefix| key["key"].as_str().is_some_and(|k| k.starts_with(prefix))),
        "{key}"
    );
    let (_, quota) = call(&stack, Method::GET, "/quota", &erin, None).await?;
    assert_eq!(quota["limit"], 1234, "the user's own daily limit applies");
    Ok(())
}

#[tokio::test]
async fn without_an_admin_key_the_admin_api_does_not_exist() -> anyhow::Result<()> {
    let stack = Stack::start_with(|settings| {
        settings.gateway.auth_mode = chat_gateway::AuthMode::Required;
        settings.gateway.admin_api_key = None;
    })
    .await?;
    let (status, _) = call(
        &stack,
        Method::POST,
        "/admin/users",
        &Credential::Key(String::new()),
        Some(json!({"user_id": "x"})),
    )
    .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The first user exists with a random password, written to the log only.
    let (status, _) = login(&stack, "admin", "guess").await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    Ok(())
}

//! Password logins, sessions and the lockout through the real gRPC server, against a
//! real MySQL-protocol server and a real Redis.

use std::time::Duration;

use chat_proto::{CreateUserRequest, LoginResponse};
use tonic::{Code, Status};

use support::{PASSWORD, Server, code, refusal};

mod support;

#[tokio::test]
async fn a_login_opens_a_session_until_logout() -> anyhow::Result<()> {
    let server = Server::start().await?;
    let request = CreateUserRequest {
        user_id: "alice".into(),
        password: Some(PASSWORD.into()),
        daily_limit: Some(100),
        ..CreateUserRequest::default()
    };
    server.client().create_user(request).await?;
    server.create("keys-only", None).await?;

    let login = server.login("alice", PASSWORD, "10.0.0.1").await?;
    assert_eq!(login.expires_in_seconds, 12 * 3600);
    assert_eq!(login.session_id.len(), 64);
    let principal = login.principal.clone().unwrap_or_default();
    assert_eq!(
        (principal.user_id.as_str(), principal.daily_limit),
        ("alice", Some(100))
    );
    assert!(principal.key_id.is_empty());
    assert_eq!(server.session(&login.session_id).await?, principal);
    // Each login is a session of its own.
    let other = server.login("alice", PASSWORD, "10.0.0.1").await?;
    assert_ne!(other.session_id, login.session_id);

    server.logout(&login.session_id).await?;
    let refused = refusal(server.session(&login.session_id).await);
    assert_eq!(
        refused,
        (Code::Unauthenticated, "invalid credential".to_owned())
    );
    server.logout(&login.session_id).await?; // again: already over, not an error
    assert_eq!(server.session(&other.session_id).await?.user_id, "alice");
    assert_eq!(
        code(server.session("not-a-session").await),
        Code::Unauthenticated
    );

    // One message for a wrong password, an unknown user and a user without a password.
    let generic = (
        Code::Unauthenticated,
        "wrong user id or password".to_owned(),
    );
    assert_eq!(
        refusal(server.login("alice", "wrong password", "").await),
        generic
    );
    assert_eq!(refusal(server.login("nobody", PASSWORD, "").await), generic);
    assert_eq!(
        refusal(server.login("keys-only", PASSWORD, "").await),
        generic
    );
    Ok(())
}

#[tokio::test]
async fn an_unknown_user_takes_as_long_as_a_wrong_password() -> anyhow::Result<()> {
    let server = Server::start().await?;
    server.create("alice", Some(PASSWORD)).await?;
    let mut fastest = [Duration::MAX; 2];
    for _ in 0..3 {
        for (slot, user) in ["alice", "nobody"].into_iter().enumerate() {
            let started = std::time::Instant::now();
            assert_eq!(
                code(server.login(user, "wrong password", "").await),
                Code::Unauthenticated
            );
            fastest[slot] = fastest[slot].min(started.elapsed());
        }
    }
    // Both check a password hash (tens of ms); a lookup alone would take one or two.
    let [known, unknown] = fastest;
    assert!(unknown * 3 > known, "known {known:?}, unknown {unknown:?}");
    Ok(())
}

#[tokio::test]
async fn sessions_expire() -> anyhow::Result<()> {
    let server = Server::start_with(|settings| settings.session_ttl_seconds = 1).await?;
    server.create("alice", Some(PASSWORD)).await?;
    let login = server.login("alice", PASSWORD, "").await?;
    assert_eq!(login.expires_in_seconds, 1);
    assert_eq!(server.session(&login.session_id).await?.user_id, "alice");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        code(server.session(&login.session_id).await),
        Code::Unauthenticated
    );
    Ok(())
}

/// A server that allows 3 failures in a 2 s window.
async fn strict_server() -> anyhow::Result<Server> {
    Server::start_with(|settings| {
        settings.login_max_failures = 3;
        settings.login_failure_window_seconds = 2;
    })
    .await
}

fn retry_after(outcome: Result<LoginResponse, Status>) -> Option<u64> {
    let status = outcome.err()?;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("too many failed logins; try again later")
    );
    status
        .metadata()
        .get("retry-after")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[tokio::test]
async fn an_account_is_locked_after_too_many_failures_from_anywhere() -> anyhow::Result<()> {
    let server = strict_server().await?;
    server.create("alice", Some(PASSWORD)).await?;
    for i in 0..3 {
        let failed = server
            .login("alice", "wrong password", &format!("10.0.0.{i}"))
            .await;
        assert_eq!(code(failed), Code::Unauthenticated);
    }
    // Even the right password, from a fresh address, is refused unchecked.
    let locked = retry_after(server.login("alice", PASSWORD, "10.0.0.9").await);
    assert!(matches!(locked, Some(1..=2)), "{locked:?}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    server.login("alice", PASSWORD, "10.0.0.9").await?;
    Ok(())
}

#[tokio::test]
async fn an_address_is_locked_after_too_many_failures_on_any_account() -> anyhow::Result<()> {
    let server = strict_server().await?;
    for user in ["u1", "u2", "u3", "u4"] {
        server.create(user, Some(PASSWORD)).await?;
    }
    for user in ["u1", "u2", "u3"] {
        assert_eq!(
            code(server.login(user, "wrong password", "10.0.0.1").await),
            Code::Unauthenticated
        );
    }
    assert!(retry_after(server.login("u4", PASSWORD, "10.0.0.1").await).is_some());
    // Another address, and the accounts themselves, are not locked.
    server.login("u4", PASSWORD, "10.0.0.2").await?;
    server.login("u1", PASSWORD, "10.0.0.2").await?;
    Ok(())
}

#[tokio::test]
async fn a_successful_login_clears_the_account_count() -> anyhow::Result<()> {
    let server = strict_server().await?;
    server.create("alice", Some(PASSWORD)).await?;
    for _ in 0..2 {
        assert_eq!(
            code(server.login("alice", "wrong password", "").await),
            Code::Unauthenticated
        );
    }
    server.login("alice", PASSWORD, "").await?;
    for _ in 0..2 {
        assert_eq!(
            code(server.login("alice", "wrong password", "").await),
            Code::Unauthenticated
        );
    }
    server.login("alice", PASSWORD, "").await?;
    Ok(())
}

//! Users and API keys through the real gRPC server, against a real MySQL-protocol
//! server and a real Redis.

use chat_proto::{CreateUserRequest, UpdateUserRequest};
use mysql_async::prelude::Queryable;
use sha2::{Digest, Sha256};
use tonic::Code;

use support::{PASSWORD, Server, code, get, now_ms, refusal, update};

mod support;

#[tokio::test]
async fn users_are_created_read_and_changed_field_by_field() -> anyhow::Result<()> {
    let server = Server::start().await?;
    let started_ms = now_ms();
    let request = CreateUserRequest {
        user_id: "alice".into(),
        password: Some(PASSWORD.into()),
        daily_limit: Some(20_000),
        rate_limit_per_minute: Some(30),
    };
    let alice = server.client().create_user(request).await?.into_inner();
    assert_eq!(alice.user_id, "alice");
    assert!(alice.has_password && !alice.disabled);
    assert_eq!(
        (alice.daily_limit, alice.rate_limit_per_minute),
        (Some(20_000), Some(30))
    );
    assert!((alice.created_at_unix_ms - started_ms).abs() < 60_000);
    assert_eq!(
        server.client().get_user(get("alice")).await?.into_inner(),
        alice
    );

    // Ids are exact: another case is another user.
    let upper = server.create("Alice", None).await?;
    assert!(!upper.has_password && upper.daily_limit.is_none());
    assert_eq!(
        code(server.create("alice", None).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(server.create("a b", None).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(server.create("bob", Some("short")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(server.client().get_user(get("bob")).await),
        Code::NotFound
    );

    // Only the fields present change; a limit of 0 or less clears the override.
    let changed = server
        .update(UpdateUserRequest {
            daily_limit: Some(0),
            ..update("alice")
        })
        .await?;
    assert_eq!(
        (changed.daily_limit, changed.rate_limit_per_minute),
        (None, Some(30))
    );
    let changed = server
        .update(UpdateUserRequest {
            rate_limit_per_minute: Some(-1),
            daily_limit: Some(7),
            disabled: Some(true),
            ..update("alice")
        })
        .await?;
    assert_eq!(
        (changed.daily_limit, changed.rate_limit_per_minute),
        (Some(7), None)
    );
    assert!(changed.disabled && changed.has_password);
    assert_eq!(
        server.update(update("alice")).await?,
        changed,
        "nothing to change"
    );
    let too_large = UpdateUserRequest {
        rate_limit_per_minute: Some(i64::from(u32::MAX) + 1),
        ..update("alice")
    };
    assert_eq!(code(server.update(too_large).await), Code::InvalidArgument);
    assert_eq!(code(server.update(update("bob")).await), Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn a_key_authenticates_its_user_until_revoked() -> anyhow::Result<()> {
    let server = Server::start().await?;
    server
        .client()
        .create_user(CreateUserRequest {
            user_id: "alice".into(),
            daily_limit: Some(900),
            rate_limit_per_minute: Some(12),
            ..CreateUserRequest::default()
        })
        .await?;
    let created = server.new_key("alice", "ci").await?;
    let info = created.info.clone().unwrap_or_default();
    assert!(created.key.starts_with(&format!("{}-", info.prefix)));
    assert_eq!(info.prefix, format!("sk-chat-{}", info.key_id));
    assert_eq!((info.user_id.as_str(), info.name.as_str()), ("alice", "ci"));
    assert!(info.last_used_at_unix_ms.is_none() && info.revoked_at_unix_ms.is_none());

    let principal = server.authenticate(&created.key).await?;
    assert_eq!(principal.user_id, "alice");
    assert_eq!(principal.key_id, info.key_id);
    assert_eq!(
        (principal.daily_limit, principal.rate_limit_per_minute),
        (Some(900), Some(12))
    );

    // Anything but the exact key gets the one generic refusal.
    let tampered = format!("{}x", &created.key[..created.key.len() - 1]);
    let unknown_id = created.key.replacen(&info.key_id, "zzzzzzzzzzzz", 1);
    for wrong in [
        tampered.as_str(),
        unknown_id.as_str(),
        "sk-chat-nonsense",
        "",
    ] {
        let refused = refusal(server.authenticate(wrong).await);
        assert_eq!(
            refused,
            (Code::Unauthenticated, "invalid credential".to_owned())
        );
    }

    // The listing shows when it was used, and no secret.
    let listed = server.keys("alice").await?;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].last_used_at_unix_ms.is_some(), "{listed:?}");
    let secret = created.key.rsplit('-').next().unwrap_or_default();
    assert!(!format!("{listed:?}").contains(secret));

    server.revoke(&info.key_id).await?;
    let refused = refusal(server.authenticate(&created.key).await);
    assert_eq!(
        refused,
        (Code::Unauthenticated, "invalid credential".to_owned())
    );
    server.revoke(&info.key_id).await?; // again: still revoked, not an error
    let listed = server.keys("alice").await?;
    assert!(listed[0].revoked_at_unix_ms.is_some());
    assert_eq!(code(server.revoke("zzzzzzzzzzzz").await), Code::NotFound);
    assert_eq!(code(server.revoke("not a key id").await), Code::NotFound);

    assert_eq!(code(server.new_key("nobody", "ci").await), Code::NotFound);
    assert_eq!(
        code(server.new_key("alice", "  ").await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(server.client().list_keys(get("nobody")).await),
        Code::NotFound
    );
    Ok(())
}

#[tokio::test]
async fn only_the_hash_of_a_key_is_stored() -> anyhow::Result<()> {
    let server = Server::start().await?;
    server.create("alice", None).await?;
    let created = server.new_key("alice", "ci").await?;
    let key_id = created.info.unwrap_or_default().key_id;
    let mut mysql = server.mysql().await?;
    let row: Option<(Vec<u8>, String, String)> = mysql
        .exec_first(
            "SELECT secret_hash, prefix, name FROM api_keys WHERE key_id = ?",
            (&key_id,),
        )
        .await?;
    let (hash, prefix, name) = row.unwrap_or_default();
    assert_eq!(hash, Sha256::digest(created.key.as_bytes()).to_vec());
    let secret = created.key.rsplit('-').next().unwrap_or_default();
    assert!(!prefix.contains(secret) && !name.contains(secret));
    Ok(())
}

#[tokio::test]
async fn a_disabled_user_is_refused_everywhere_until_enabled() -> anyhow::Result<()> {
    let server = Server::start().await?;
    server.create("alice", Some(PASSWORD)).await?;
    let key = server.new_key("alice", "ci").await?.key;
    let session = server.login("alice", PASSWORD, "").await?.session_id;
    server
        .update(UpdateUserRequest {
            disabled: Some(true),
            ..update("alice")
        })
        .await?;
    assert_eq!(code(server.authenticate(&key).await), Code::Unauthenticated);
    assert_eq!(code(server.session(&session).await), Code::Unauthenticated);
    let refused = refusal(server.login("alice", PASSWORD, "").await);
    assert_eq!(
        refused,
        (
            Code::Unauthenticated,
            "wrong user id or password".to_owned()
        )
    );
    server
        .update(UpdateUserRequest {
            disabled: Some(false),
            ..update("alice")
        })
        .await?;
    assert_eq!(server.authenticate(&key).await?.user_id, "alice");
    assert_eq!(server.session(&session).await?.user_id, "alice");
    Ok(())
}

#[tokio::test]
async fn bootstrap_creates_one_first_user_however_many_replicas_race() -> anyhow::Result<()> {
    let server = Server::start().await?;
    let racing = (0..6).map(|i| {
        let server = &server;
        async move { server.bootstrap(&format!("admin{i}")).await }
    });
    let created = futures::future::try_join_all(racing).await?;
    assert_eq!(
        created.iter().filter(|created| **created).count(),
        1,
        "{created:?}"
    );
    assert!(!server.bootstrap("admin").await?, "there are users now");
    // Answered before any hashing now, but a bad request is still refused as one.
    let short = CreateUserRequest {
        user_id: "admin".into(),
        password: Some("short".into()),
        ..CreateUserRequest::default()
    };
    let refused = server.client().bootstrap(short).await;
    assert_eq!(
        refused.map_err(|status| status.code()).err(),
        Some(Code::InvalidArgument)
    );
    let users: Option<i64> = server
        .mysql()
        .await?
        .query_first("SELECT COUNT(*) FROM users")
        .await?;
    assert_eq!(users, Some(1));
    let first = created
        .iter()
        .position(|created| *created)
        .unwrap_or_default();
    let login = server.login(&format!("admin{first}"), PASSWORD, "").await?;
    assert_eq!(
        login.principal.unwrap_or_default().user_id,
        format!("admin{first}")
    );
    Ok(())
}

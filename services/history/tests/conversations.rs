//! Conversations against a real MySQL-protocol server and a real Redis: each keeps its
//! own messages and cache, another user's is not found, pages cover everything once,
//! and a delete or an erase leaves nothing behind in either store.

use std::time::Duration;

use chat_history::{History, Settings};
use chat_proto::history_service_server::HistoryService;
use chat_proto::{
    Conversation, ConversationRequest, CreateConversationRequest, EraseUserRequest,
    LatestConversationRequest, ListConversationMessagesRequest, ListConversationsRequest,
    ListRequest, ListResponse, NewMessage, RenameConversationRequest, Role, SaveRequest,
    SaveResponse,
};
use chat_testing::{TestDatabase, TestRedis};
use mysql_async::prelude::Queryable;
use tonic::{Code, Request, Status};

struct Fixture {
    history: History,
    db: TestDatabase,
    redis: TestRedis,
}

impl Fixture {
    async fn new() -> anyhow::Result<Self> {
        let (db, redis) = (TestDatabase::new().await?, TestRedis::new().await?);
        let history = History::connect(&Settings {
            mysql_dsn: db.url.clone().into(),
            redis_addr: redis.addr.clone(),
            redis_key_prefix: redis.prefix.clone(),
            ..Settings::default()
        })
        .await?;
        Ok(Self { history, db, redis })
    }

    /// Saves one user message and its reply; `to` is (conversation id, key).
    async fn save(
        &self,
        user: &str,
        to: (&str, &str),
        texts: &[&str],
    ) -> Result<SaveResponse, Status> {
        let messages = texts
            .iter()
            .enumerate()
            .map(|(i, text)| NewMessage {
                role: if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                }
                .into(),
                text: (*text).into(),
                incomplete: false,
            })
            .collect();
        let request = SaveRequest {
            user_id: user.into(),
            messages,
            conversation_id: to.0.into(),
            conversation_key: to.1.into(),
            ..SaveRequest::default()
        };
        Ok(self.history.save(Request::new(request)).await?.into_inner())
    }

    /// The newest messages of one conversation (the chat's context), or of all.
    async fn context(&self, user: &str, conversation: &str) -> Result<ListResponse, Status> {
        let request = ListRequest {
            user_id: user.into(),
            limit: 0,
            conversation_id: conversation.into(),
            ..ListRequest::default()
        };
        Ok(self.history.list(Request::new(request)).await?.into_inner())
    }

    /// The user's latest conversation, as `LatestConversation` answers.
    async fn latest(&self, user: &str) -> anyhow::Result<Conversation> {
        let request = LatestConversationRequest {
            user_id: user.into(),
        };
        Ok(self
            .history
            .latest_conversation(Request::new(request))
            .await?
            .into_inner())
    }

    async fn get(&self, user: &str, conversation: &str) -> Result<Conversation, Status> {
        Ok(self
            .history
            .get_conversation(Request::new(of(user, conversation)))
            .await?
            .into_inner())
    }

    async fn create(&self, user: &str, title: &str) -> Result<Conversation, Status> {
        let request = CreateConversationRequest {
            user_id: user.into(),
            title: title.into(),
        };
        Ok(self
            .history
            .create_conversation(Request::new(request))
            .await?
            .into_inner())
    }

    async fn mysql(&self) -> anyhow::Result<mysql_async::Conn> {
        let pool = mysql_async::Pool::new(chat_history::mysql_opts(&self.db.url)?);
        Ok(pool.get_conn().await?)
    }

    /// Every Redis key of this test's prefix.
    async fn redis_keys(&self) -> anyhow::Result<Vec<String>> {
        let pool = chat_common::redis::pool(&self.redis.addr, 1, Duration::from_secs(2))?;
        let mut connection = pool.get().await?;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.redis.prefix))
            .query_async(&mut connection)
            .await?;
        keys.sort();
        Ok(keys)
    }
}

fn of(user: &str, conversation: &str) -> ConversationRequest {
    ConversationRequest {
        user_id: user.into(),
        conversation_id: conversation.into(),
    }
}

fn texts(response: &ListResponse) -> Vec<&str> {
    response.messages.iter().map(|m| m.text.as_str()).collect()
}

fn code<T: std::fmt::Debug>(outcome: Result<T, Status>) -> Code {
    match outcome {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn two_conversations_keep_their_own_messages_and_caches() -> anyhow::Result<()> {
    let fixture = Fixture::new().await?;
    let first = fixture
        .save("u1", ("", ""), &["about cats", "meow"])
        .await?;
    let second = fixture
        .save("u1", ("", ""), &["about dogs", "woof"])
        .await?;
    assert_ne!(
        first.conversation_id, second.conversation_id,
        "neither id nor key: a new one"
    );
    fixture
        .save("u1", (&first.conversation_id, ""), &["more cats", "purr"])
        .await?;
    for expect_cache in [false, true] {
        let cats = fixture.context("u1", &first.conversation_id).await?;
        assert_eq!(cats.from_cache, expect_cache);
        assert_eq!(texts(&cats), ["about cats", "meow", "more cats", "purr"]);
        let dogs = fixture.context("u1", &second.conversation_id).await?;
        assert_eq!(dogs.from_cache, expect_cache);
        assert_eq!(texts(&dogs), ["about dogs", "woof"]);
    }
    // The user's recent messages across conversations keep the original's shape.
    let all = fixture.context("u1", "").await?;
    assert_eq!(
        texts(&all),
        [
            "about cats",
            "meow",
            "about dogs",
            "woof",
            "more cats",
            "purr"
        ]
    );
    // A save after the caches were filled shows in both, from the cache.
    fixture
        .save("u1", (&second.conversation_id, ""), &["last", "one"])
        .await?;
    let dogs = fixture.context("u1", &second.conversation_id).await?;
    assert!(dogs.from_cache);
    assert_eq!(texts(&dogs), ["about dogs", "woof", "last", "one"]);
    let counted = fixture.get("u1", &first.conversation_id).await?;
    assert_eq!(counted.message_count, 4);
    Ok(())
}

#[tokio::test]
async fn another_users_or_a_malformed_id_is_not_found_and_a_key_is_per_user() -> anyhow::Result<()>
{
    let fixture = Fixture::new().await?;
    let alice = fixture
        .save("alice", ("", "chat-7"), &["alice's secret"])
        .await?;
    let again = fixture
        .save("alice", ("", "chat-7"), &["second turn"])
        .await?;
    assert_eq!(
        alice.conversation_id, again.conversation_id,
        "a key finds its conversation"
    );
    let bob = fixture.save("bob", ("", "chat-7"), &["bob's own"]).await?;
    assert_ne!(
        bob.conversation_id, alice.conversation_id,
        "keys are per user"
    );

    let theirs = alice.conversation_id.as_str();
    assert_eq!(code(fixture.get("bob", theirs).await), Code::NotFound);
    assert_eq!(code(fixture.context("bob", theirs).await), Code::NotFound);
    let past_the_cache = ListRequest {
        user_id: "bob".into(),
        limit: 200,
        conversation_id: theirs.into(),
        ..ListRequest::default()
    };
    assert_eq!(
        code(fixture.history.list(Request::new(past_the_cache)).await),
        Code::NotFound
    );
    assert_eq!(
        code(fixture.save("bob", (theirs, ""), &["sneak in"]).await),
        Code::NotFound
    );
    let messages = ListConversationMessagesRequest {
        user_id: "bob".into(),
        conversation_id: theirs.into(),
        ..ListConversationMessagesRequest::default()
    };
    assert_eq!(
        code(
            fixture
                .history
                .list_conversation_messages(Request::new(messages))
                .await
        ),
        Code::NotFound
    );
    let rename = RenameConversationRequest {
        user_id: "bob".into(),
        conversation_id: theirs.into(),
        title: "mine now".into(),
    };
    assert_eq!(
        code(
            fixture
                .history
                .rename_conversation(Request::new(rename))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            fixture
                .history
                .delete_conversation(Request::new(of("bob", theirs)))
                .await
        ),
        Code::NotFound
    );
    // Different case is a different user, as everywhere.
    assert_eq!(code(fixture.get("ALICE", theirs).await), Code::NotFound);
    for malformed in [
        "nope",
        "../x",
        &theirs.to_uppercase(),
        &format!("{theirs}x"),
    ] {
        assert_eq!(
            code(fixture.get("alice", malformed).await),
            Code::NotFound,
            "{malformed}"
        );
    }
    assert_eq!(
        code(fixture.save("alice", ("", &"k".repeat(129)), &["x"]).await),
        Code::InvalidArgument
    );
    // Alice's conversation is untouched by all of it.
    let kept = fixture.context("alice", theirs).await?;
    assert_eq!(texts(&kept), ["alice's secret", "second turn"]);
    assert_eq!(fixture.get("alice", theirs).await?.title, "alice's secret");
    Ok(())
}

#[tokio::test]
async fn pages_return_every_message_and_conversation_exactly_once() -> anyhow::Result<()> {
    let fixture = Fixture::new().await?;
    let conversation = fixture.create("u1", "").await?.id;
    let mut saved = Vec::new();
    for i in 0..12 {
        let question = format!("question {i}");
        let answer = format!("answer {i}");
        let turn: &[&str] = if i % 3 == 0 {
            &[&question]
        } else {
            &[&question, &answer]
        };
        saved.extend(fixture.save("u1", (&conversation, ""), turn).await?.ids);
    }
    fixture.save("u1", ("", ""), &["elsewhere"]).await?;
    for limit in [1, 5, 7, 200] {
        let (mut seen, mut cursor, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let request = ListConversationMessagesRequest {
                user_id: "u1".into(),
                conversation_id: conversation.clone(),
                limit,
                cursor: cursor.clone(),
            };
            let page = fixture
                .history
                .list_conversation_messages(Request::new(request))
                .await?
                .into_inner();
            assert!(page.messages.len() <= limit as usize);
            seen.extend(page.messages.iter().map(|m| m.id));
            pages += 1;
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor;
        }
        assert_eq!(seen, saved, "limit {limit}: each once, oldest first");
        assert!(
            pages >= saved.len().div_ceil(limit as usize),
            "limit {limit}"
        );
    }

    // Conversations: newest activity first, each once.
    let mut made = vec![conversation.clone()];
    for _ in 0..6 {
        made.push(fixture.create("u1", "").await?.id);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Activity moves the first one to the front.
    fixture.save("u1", (&conversation, ""), &["bump"]).await?;
    let (mut listed, mut cursor) = (Vec::new(), String::new());
    loop {
        let request = ListConversationsRequest {
            user_id: "u1".into(),
            limit: 3,
            cursor: cursor.clone(),
        };
        let page = fixture
            .history
            .list_conversations(Request::new(request))
            .await?
            .into_inner();
        listed.extend(page.conversations);
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(listed.len(), 8, "seven made here and one by a save");
    assert_eq!(listed[0].id, conversation);
    assert!(
        listed
            .windows(2)
            .all(|pair| pair[0].updated_at_unix_ms >= pair[1].updated_at_unix_ms),
        "newest activity first"
    );
    let mut ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8, "each once");
    let bad = ListConversationsRequest {
        user_id: "u1".into(),
        limit: 3,
        cursor: "not-a-cursor".into(),
    };
    assert_eq!(
        code(fixture.history.list_conversations(Request::new(bad)).await),
        Code::InvalidArgument
    );
    Ok(())
}

#[tokio::test]
async fn a_deleted_conversation_is_gone_from_mysql_and_the_cache() -> anyhow::Result<()> {
    let fixture = Fixture::new().await?;
    let doomed = fixture
        .save("u1", ("", ""), &["forget me", "ok"])
        .await?
        .conversation_id;
    let kept = fixture
        .save("u1", ("", ""), &["keep me", "sure"])
        .await?
        .conversation_id;
    // Fill every cache: each conversation's and the user's.
    fixture.context("u1", &doomed).await?;
    fixture.context("u1", &kept).await?;
    fixture.context("u1", "").await?;
    assert!(fixture.context("u1", &doomed).await?.from_cache);
    let keys = fixture.redis_keys().await?;
    assert!(keys.iter().any(|key| key.contains(&doomed)), "{keys:?}");

    fixture
        .history
        .delete_conversation(Request::new(of("u1", &doomed)))
        .await?;

    let mut mysql = fixture.mysql().await?;
    let left: Option<i64> = mysql
        .exec_first(
            "SELECT COUNT(*) FROM chat_history WHERE conversation_id = ?",
            (&doomed,),
        )
        .await?;
    assert_eq!(left, Some(0));
    let rows: Option<i64> = mysql
        .exec_first(
            "SELECT COUNT(*) FROM conversations WHERE id = ?",
            (&doomed,),
        )
        .await?;
    assert_eq!(rows, Some(0));
    let keys = fixture.redis_keys().await?;
    assert!(!keys.iter().any(|key| key.contains(&doomed)), "{keys:?}");

    assert_eq!(code(fixture.get("u1", &doomed).await), Code::NotFound);
    assert_eq!(code(fixture.context("u1", &doomed).await), Code::NotFound);
    assert_eq!(
        code(fixture.save("u1", (&doomed, ""), &["back?"]).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            fixture
                .history
                .delete_conversation(Request::new(of("u1", &doomed)))
                .await
        ),
        Code::NotFound,
        "a second delete finds nothing"
    );
    // The deleted messages are gone from the user's recent list too.
    assert_eq!(
        texts(&fixture.context("u1", "").await?),
        ["keep me", "sure"]
    );
    assert_eq!(
        texts(&fixture.context("u1", &kept).await?),
        ["keep me", "sure"]
    );
    Ok(())
}

#[tokio::test]
async fn erasing_a_user_leaves_nothing_of_theirs_in_mysql_or_redis() -> anyhow::Result<()> {
    let fixture = Fixture::new().await?;
    for _ in 0..3 {
        let id = fixture
            .save("u1", ("", ""), &["mine", "yours"])
            .await?
            .conversation_id;
        fixture.context("u1", &id).await?;
    }
    fixture.save("u1", ("", "client-key"), &["keyed"]).await?;
    fixture.create("u1", "empty one").await?;
    fixture.context("u1", "").await?;
    let other = fixture
        .save("u2", ("", ""), &["not yours"])
        .await?
        .conversation_id;
    fixture.context("u2", &other).await?;
    fixture.context("u2", "").await?;

    let erased = fixture
        .history
        .erase_user(Request::new(EraseUserRequest {
            user_id: "u1".into(),
        }))
        .await?
        .into_inner();
    assert_eq!((erased.conversations, erased.messages), (5, 7));

    let mut mysql = fixture.mysql().await?;
    for table in ["chat_history", "conversations"] {
        let left: Option<i64> = mysql
            .exec_first(
                format!("SELECT COUNT(*) FROM {table} WHERE user_id = ?"),
                ("u1",),
            )
            .await?;
        assert_eq!(left, Some(0), "{table}");
        let others: Option<i64> = mysql
            .exec_first(
                format!("SELECT COUNT(*) FROM {table} WHERE user_id = ?"),
                ("u2",),
            )
            .await?;
        assert!(others > Some(0), "{table}: u2 keeps theirs");
    }
    // Whatever the key layout, no key names u1 any more (ids are hex: no "u").
    let keys = fixture.redis_keys().await?;
    let names = |user: &str| {
        keys.iter()
            .filter(|key| key[fixture.redis.prefix.len()..].contains(user))
            .count()
    };
    assert_eq!(names("u1"), 0, "{keys:?}");
    assert_eq!(
        names("u2"),
        5,
        "u2's lists, versions and latest conversation stay: {keys:?}"
    );
    assert!(texts(&fixture.context("u1", "").await?).is_empty());
    let listed = fixture
        .history
        .list_conversations(Request::new(ListConversationsRequest {
            user_id: "u1".into(),
            ..ListConversationsRequest::default()
        }))
        .await?
        .into_inner();
    assert!(listed.conversations.is_empty());
    assert_eq!(texts(&fixture.context("u2", &other).await?), ["not yours"]);
    Ok(())
}

#[tokio::test]
async fn a_title_comes_from_the_first_user_message_until_renamed() -> anyhow::Result<()> {
    let fixture = Fixture::new().await?;
    let long =
        "  How do I keep a sourdough starter alive while I am away on holiday for two weeks?  ";
    let saved = fixture.save("u1", ("", ""), &[long, "feed it"]).await?;
    let titled = fixture.get("u1", &saved.conversation_id).await?;
    assert_eq!(
        titled.title,
        "How do I keep a sourdough starter alive while I am away on…"
    );
    fixture
        .save("u1", (&saved.conversation_id, ""), &["a later question"])
        .await?;
    assert_eq!(
        fixture.get("u1", &saved.conversation_id).await?.title,
        titled.title
    );

    let rename = |title: &str| RenameConversationRequest {
        user_id: "u1".into(),
        conversation_id: saved.conversation_id.clone(),
        title: title.into(),
    };
    let before = fixture.get("u1", &saved.conversation_id).await?;
    let renamed = fixture
        .history
        .rename_conversation(Request::new(rename("  Bread\n notes ")))
        .await?
        .into_inner();
    assert_eq!(renamed.title, "Bread notes");
    assert_eq!(
        renamed.updated_at_unix_ms, before.updated_at_unix_ms,
        "a rename is not activity"
    );
    for bad in ["   ", &"x".repeat(121)] {
        assert_eq!(
            code(
                fixture
                    .history
                    .rename_conversation(Request::new(rename(bad)))
                    .await
            ),
            Code::InvalidArgument
        );
    }
    assert_eq!(
        fixture.get("u1", &saved.conversation_id).await?.title,
        "Bread notes"
    );

    // Created with a title: it stays; created without: the first message names it.
    let named = fixture.create("u1", "Plans").await?;
    fixture
        .save("u1", (&named.id, ""), &["ignored as a title"])
        .await?;
    assert_eq!(fixture.get("u1", &named.id).await?.title, "Plans");
    let unnamed = fixture.create("u1", "").await?;
    assert_eq!(unnamed.title, "");
    fixture
        .save("u1", (&unnamed.id, ""), &["名字 from here"])
        .await?;
    assert_eq!(
        fixture.get("u1", &unnamed.id).await?.title,
        "名字 from here"
    );
    Ok(())
}

#[tokio::test]
async fn the_latest_conversation_is_the_most_recently_active_or_a_new_one() -> anyhow::Result<()> {
    let fixture = Fixture::new().await?;
    let latest = async |user: &str| fixture.latest(user).await;
    let fresh = latest("u1").await?;
    assert_eq!(fresh.message_count, 0);
    assert_eq!(
        latest("u1").await?.id,
        fresh.id,
        "asking again makes no other"
    );
    let other = fixture
        .save("u1", ("", ""), &["newer"])
        .await?
        .conversation_id;
    assert_eq!(latest("u1").await?.id, other);
    tokio::time::sleep(Duration::from_millis(2)).await;
    fixture
        .save("u1", (&fresh.id, ""), &["back to the first"])
        .await?;
    assert_eq!(latest("u1").await?.id, fresh.id);
    Ok(())
}

/// What a chat naming no conversation reads: the latest conversation and its messages in
/// one call, the same one `LatestConversation` names, through saves, a new conversation
/// and a delete; never another user's.
#[tokio::test]
async fn the_latest_context_follows_saves_new_conversations_and_deletes() -> anyhow::Result<()> {
    let fixture = Fixture::new().await?;
    let latest_context = |user: &str| {
        let request = ListRequest {
            user_id: user.into(),
            latest_conversation: true,
            ..ListRequest::default()
        };
        let history = fixture.history.clone();
        async move { anyhow::Ok(history.list(Request::new(request)).await?.into_inner()) }
    };
    let latest = async |user: &str| anyhow::Ok(fixture.latest(user).await?.id);
    // None yet: one is made, empty, and asking again makes no other.
    let fresh = latest_context("u1").await?;
    assert!(!fresh.conversation_id.is_empty() && fresh.messages.is_empty());
    assert_eq!(
        latest_context("u1").await?.conversation_id,
        fresh.conversation_id
    );
    assert_eq!(latest("u1").await?, fresh.conversation_id);

    fixture
        .save("u1", (&fresh.conversation_id, ""), &["first", "reply"])
        .await?;
    let read = latest_context("u1").await?;
    assert_eq!(read.conversation_id, fresh.conversation_id);
    assert_eq!(texts(&read), ["first", "reply"]);

    // A save to a new conversation moves it there; a new empty conversation too.
    let other = fixture
        .save("u1", ("", ""), &["elsewhere"])
        .await?
        .conversation_id;
    let read = latest_context("u1").await?;
    assert_eq!(
        (read.conversation_id.as_str(), texts(&read)),
        (other.as_str(), vec!["elsewhere"])
    );
    let made = fixture.create("u1", "planned").await?;
    let read = latest_context("u1").await?;
    assert_eq!(read.conversation_id, made.id);
    assert!(read.messages.is_empty());
    assert_eq!(latest("u1").await?, made.id);

    // The latest deleted: the one active before it, with its messages.
    fixture
        .history
        .delete_conversation(Request::new(of("u1", &made.id)))
        .await?;
    let read = latest_context("u1").await?;
    assert_eq!(
        (read.conversation_id.as_str(), texts(&read)),
        (other.as_str(), vec!["elsewhere"])
    );

    // Another user gets their own, never u1's.
    let theirs = latest_context("u2").await?;
    assert!(theirs.messages.is_empty());
    assert!(
        ![
            fresh.conversation_id.as_str(),
            other.as_str(),
            made.id.as_str()
        ]
        .contains(&theirs.conversation_id.as_str())
    );
    Ok(())
}

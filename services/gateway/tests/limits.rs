//! Limits that hold across replicas: the per-caller rate limit shared through Redis by
//! several gateway processes, its fallback while Redis is away, and the admission caps
//! on streams.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chat_testing::stack::{self, Backing};
use chat_testing::{FakeOpenAi, OwnRedis, TestDatabase, TestRedis, Upstream};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::Stack;

const ADMIN: &str = "limits-admin-key";

/// Three gateway processes (or `gateways`) behind one set of services, authentication
/// on, `env` over the defaults for every process and `gateway_env` for each gateway.
struct Replicas {
    stack: stack::Stack,
    http: reqwest::Client,
    _provider: FakeOpenAi,
    _redis: TestRedis,
    _database: TestDatabase,
}

impl Replicas {
    async fn start(
        gateways: usize,
        env: &[(&str, &str)],
        gateway_env: Vec<Vec<(String, String)>>,
    ) -> anyhow::Result<Self> {
        let redis = TestRedis::new().await?;
        let database = TestDatabase::new().await?;
        let provider = FakeOpenAi::start().await?;
        let gateway = PathBuf::from(env!("CARGO_BIN_EXE_chat-gateway"));
        let mut all = vec![
            ("RUST_LOG", "warn"),
            ("AUTH_MODE", "required"),
            ("ADMIN_API_KEY", ADMIN),
            ("ADMIN_PASSWORD", "limits-first-admin"),
            ("FILTER_TIMEOUT_MS", "5000"),
            ("TOKEN_TIMEOUT_MS", "5000"),
            ("HISTORY_TIMEOUT_MS", "5000"),
            ("READ_RATE_LIMIT_PER_MINUTE", "0"),
        ];
        all.extend_from_slice(env);
        let options = stack::Processes {
            bin_dir: gateway.parent().map(PathBuf::from).unwrap_or_default(),
            gateways,
            env: all
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        };
        let backing = Backing::of(&redis, &database, &provider);
        let stack =
            stack::Stack::processes_with_gateway_env(&backing, &options, &gateway_env).await?;
        Ok(Self {
            stack,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            _provider: provider,
            _redis: redis,
            _database: database,
        })
    }

    /// A user (with their own rate when given) and an API key of theirs.
    async fn user(&self, user_id: &str, rate: Option<u32>) -> anyhow::Result<String> {
        let limits = match rate {
            Some(rate) => json!({"rate_limit_per_minute": rate}),
            None => json!({}),
        };
        let gateway = self.stack.gateway();
        chat_testing::accounts::make_user_with(&self.http, gateway, ADMIN, user_id, limits, "test")
            .await
    }

    /// A chat through gateway `index` (0-based, modulo their number).
    async fn chat(&self, index: usize, key: &str) -> anyhow::Result<reqwest::Response> {
        let gateways = &self.stack.gateways;
        let gateway = &gateways[index % gateways.len()];
        Ok(self
            .http
            .post(format!("{gateway}/chat"))
            .bearer_auth(key)
            .json(&json!({"text": "hello"}))
            .send()
            .await?)
    }

    /// The value of `name` on gateway `index`'s /metrics.
    async fn metric(&self, index: usize, name: &str) -> anyhow::Result<Option<f64>> {
        let gateways: Vec<&(String, String)> = self
            .stack
            .metrics
            .iter()
            .filter(|(process, _)| process.starts_with("gateway"))
            .collect();
        let (_, url) = gateways[index];
        let text = self.http.get(url).send().await?.text().await?;
        Ok(text
            .lines()
            .find(|line| line.split([' ', '{']).next() == Some(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok()))
    }
}

fn header(response: &reqwest::Response, name: &str) -> Option<u64> {
    response.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// Fires `count` chats of `key` at once, spread over the gateways; answers the statuses.
async fn burst(replicas: &Replicas, key: &str, count: usize) -> anyhow::Result<Vec<StatusCode>> {
    let chats = (0..count).map(|index| replicas.chat(index, key));
    let answers = futures::future::join_all(chats).await;
    answers
        .into_iter()
        .map(|answer| Ok(answer?.status()))
        .collect()
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test]
async fn a_callers_limit_holds_across_three_gateways() -> anyhow::Result<()> {
    let replicas = Replicas::start(3, &[("RATE_LIMIT_PER_MINUTE", "5")], Vec::new()).await?;
    let alice = replicas.user("alice", None).await?;
    let bob = replicas.user("bob", Some(2)).await?;
    let carol = replicas.user("carol", None).await?;

    // Nine at once over three gateways: five pass (the burst), not fifteen.
    let statuses = burst(&replicas, &alice, 9).await?;
    assert_eq!(count(&statuses, StatusCode::OK), 5, "{statuses:?}");
    assert_eq!(
        count(&statuses, StatusCode::TOO_MANY_REQUESTS),
        4,
        "{statuses:?}"
    );

    // The account's own rate, set in the admin API, replaces the default everywhere.
    let statuses = burst(&replicas, &bob, 6).await?;
    assert_eq!(count(&statuses, StatusCode::OK), 2, "{statuses:?}");

    // A refusal: at once, on any replica, with when to retry and the limit's state.
    for index in 0..3 {
        let started = Instant::now();
        let refused = replicas.chat(index, &alice).await?;
        assert!(started.elapsed() < Duration::from_secs(5), "not queued");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after = header(&refused, "retry-after").unwrap_or(0);
        assert!((1..=12).contains(&retry_after), "{retry_after}");
        assert_eq!(header(&refused, "x-ratelimit-limit"), Some(5));
        assert_eq!(header(&refused, "x-ratelimit-remaining"), Some(0));
        assert!(header(&refused, "x-ratelimit-reset").is_some_and(|s| (1..=60).contains(&s)));
        let body: Value = refused.json().await?;
        assert_eq!(body["code"], "rate_limited");
    }

    // Another user is not slowed by alice at her limit: carol gets her whole burst, and a
    // success says what is left.
    let first = replicas.chat(1, &carol).await?;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "x-ratelimit-limit"), Some(5));
    assert_eq!(header(&first, "x-ratelimit-remaining"), Some(4));
    let statuses = burst(&replicas, &carol, 4).await?;
    assert_eq!(count(&statuses, StatusCode::OK), 4, "{statuses:?}");

    // A request with a wrong key costs the owner of no key anything: it is counted
    // against the address, and dave's allowance is whole.
    let dave = replicas.user("dave", None).await?;
    for index in 0..3 {
        let wrong = replicas.chat(index, "sk-chat-000000000000-wrong").await?;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    }
    let statuses = burst(&replicas, &dave, 5).await?;
    assert_eq!(count(&statuses, StatusCode::OK), 5, "{statuses:?}");
    Ok(())
}

/// Polls `metric` on gateway 0 until it is `value`, for up to 15 s.
async fn metric_becomes(replicas: &Replicas, metric: &str, value: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = replicas.metric(0, metric).await?;
        if now == Some(value) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{metric} is {now:?}, not {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_limiter_falls_back_while_redis_is_away_and_comes_back_with_it() -> anyhow::Result<()> {
    let mut own = OwnRedis::start().await?;
    // The services keep the shared test Redis; only the gateway's limiter uses its own.
    let gateway_env = vec![vec![("REDIS_ADDR".to_owned(), own.addr())]];
    let replicas = Replicas::start(1, &[("RATE_LIMIT_PER_MINUTE", "3")], gateway_env).await?;
    let alice = replicas.user("alice", None).await?;
    let statuses = burst(&replicas, &alice, 5).await?;
    assert_eq!(count(&statuses, StatusCode::OK), 3, "{statuses:?}");
    assert_eq!(
        replicas.metric(0, "gateway_rate_limiter_fallback").await?,
        Some(0.0)
    );

    own.stop().await?;
    // Still limited, by the gateway alone: a fresh local bucket of three, then 429, each
    // answered promptly although Redis does not answer at all.
    let bob = replicas.user("bob", None).await?;
    let started = Instant::now();
    let statuses = burst(&replicas, &bob, 5).await?;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(count(&statuses, StatusCode::OK), 3, "{statuses:?}");
    assert_eq!(
        count(&statuses, StatusCode::TOO_MANY_REQUESTS),
        2,
        "{statuses:?}"
    );
    metric_becomes(&replicas, "gateway_rate_limiter_fallback", 1.0).await?;
    assert_eq!(
        replicas
            .metric(0, "gateway_rate_limiter_outages_total")
            .await?,
        Some(1.0)
    );

    own.resume().await?;
    metric_becomes(&replicas, "gateway_rate_limiter_fallback", 0.0).await?;
    // Shared again: the restarted Redis is empty, so carol's bucket there is whole, and
    // it is the one that counts.
    let carol = replicas.user("carol", None).await?;
    let statuses = burst(&replicas, &carol, 5).await?;
    assert_eq!(count(&statuses, StatusCode::OK), 3, "{statuses:?}");
    let pool = chat_common::redis::pool(&own.addr(), 1, Duration::from_secs(2))?;
    let mut connection = pool.get().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*ratelimit:{user:carol}:model")
        .query_async(&mut connection)
        .await?;
    assert_eq!(keys.len(), 1, "carol's bucket is in Redis: {keys:?}");
    // It expires once whole again (three requests at one per 20 s: within a minute), so
    // Redis holds only the buckets of recent callers.
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut connection)
        .await?;
    assert!((1..=60_000).contains(&ttl_ms), "{ttl_ms}");
    Ok(())
}

/// Opens a stream of `user`; answers its response (headers only, the body still coming).
async fn open_stream(stack: &Stack, user: &str) -> anyhow::Result<reqwest::Response> {
    Ok(stack
        .http
        .post(stack.url("/chat/stream"))
        .json(&json!({"user_id": user, "text": "tell me a long story"}))
        .send()
        .await?)
}

async fn slow_streams(max_streams: usize, per_user: u32) -> anyhow::Result<Stack> {
    let stack = Stack::start_with(|settings| {
        settings.gateway.max_concurrent_streams = max_streams;
        settings.gateway.max_streams_per_user = per_user;
    })
    .await?;
    stack.provider.always(Upstream::Streamed {
        text: "one two three four five six seven eight".to_owned(),
        chunk_delay: Duration::from_millis(500),
    });
    Ok(stack)
}

#[tokio::test]
async fn stream_caps_hold_under_a_burst_and_free_their_places() -> anyhow::Result<()> {
    let stack = slow_streams(3, 2).await?;
    // Ten users at once against three places: three streams, seven shed at once.
    let users: Vec<String> = (0..10).map(|user| format!("u{user}")).collect();
    let opened =
        futures::future::join_all(users.iter().map(|user| open_stream(&stack, user))).await;
    let mut streams = Vec::new();
    let mut shed = 0;
    for response in opened {
        let response = response?;
        match response.status() {
            StatusCode::OK => streams.push(response),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(header(&response, "retry-after"), Some(1));
                let body: Value = response.json().await?;
                assert_eq!(body["code"], "streams_overloaded");
                shed += 1;
            }
            other => anyhow::bail!("unexpected {other}"),
        }
    }
    assert_eq!((streams.len(), shed), (3, 7));
    // A stream that ends (here: its client leaves) gives its place back.
    streams.clear();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let again = open_stream(&stack, "late").await?;
        if again.status() == StatusCode::OK {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no place came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test]
async fn one_user_holds_at_most_their_streams_and_others_still_get_theirs() -> anyhow::Result<()> {
    let stack = slow_streams(100, 2).await?;
    let opened = futures::future::join_all((0..5).map(|_| open_stream(&stack, "greedy"))).await;
    let mut open = Vec::new();
    for response in opened {
        let response = response?;
        if response.status() == StatusCode::OK {
            open.push(response);
        } else {
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(header(&response, "retry-after"), Some(1));
            let body: Value = response.json().await?;
            assert_eq!(body["code"], "too_many_streams");
        }
    }
    assert_eq!(open.len(), 2, "the per-user cap");
    let other = open_stream(&stack, "modest").await?;
    assert_eq!(
        other.status(),
        StatusCode::OK,
        "another user is not held back"
    );
    Ok(())
}

#[tokio::test]
async fn requests_without_a_credential_are_limited_per_client_address() -> anyhow::Result<()> {
    let stack = Stack::start_with(|settings| {
        settings.gateway.auth_mode = chat_gateway::AuthMode::Required;
        settings.gateway.address_rate_limit_per_minute = 2;
        // The test's client is the proxy: its X-Forwarded-For names the client.
        settings.gateway.trusted_proxies = "127.0.0.1".to_owned();
    })
    .await?;
    let login = |client: &'static str| {
        stack
            .http
            .post(stack.url("/auth/login"))
            .header("x-forwarded-for", client)
            .json(&json!({"user_id": "nobody", "password": "wrong password"}))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(
            login("203.0.113.7").await?.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // The third try from that address is refused before any password is checked, and so
    // is a request with a wrong key from it: one bucket for all it sends unauthenticated.
    let refused = login("203.0.113.7").await?;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&refused, "retry-after").is_some_and(|s| (1..=30).contains(&s)));
    assert_eq!(refused.json::<Value>().await?["code"], "rate_limited");
    let wrong_key = stack
        .http
        .get(stack.url("/quota"))
        .header("x-forwarded-for", "203.0.113.7")
        .bearer_auth("sk-chat-000000000000-wrong")
        .send()
        .await?;
    assert_eq!(wrong_key.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another address has its own allowance.
    assert_eq!(
        login("198.51.100.9").await?.status(),
        StatusCode::UNAUTHORIZED
    );
    Ok(())
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() -> anyhow::Result<()> {
    let stack = Stack::start_with(|settings| {
        settings.gateway.auth_mode = chat_gateway::AuthMode::Required;
        settings.gateway.address_rate_limit_per_minute = 2;
    })
    .await?;
    // Each request claims another address; with no trusted proxy the peer is the client,
    // so the claims change nothing.
    let mut statuses = Vec::new();
    for index in 0..3 {
        let response = stack
            .http
            .post(stack.url("/auth/login"))
            .header("x-forwarded-for", format!("192.0.2.{index}"))
            .json(&json!({"user_id": "nobody", "password": "wrong password"}))
            .send()
            .await?;
        statuses.push(response.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    Ok(())
}

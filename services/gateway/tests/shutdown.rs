//! Stopping and readiness, with every service its own process as deployed:
//!
//! - a gateway sent SIGTERM mid-stream refuses new connections, relays the stream to its
//!   end, settles it to the provider's usage, saves the turn and exits within its grace;
//! - a stream that outlasts the grace is cut short near its end: the client is told,
//!   what was generated is charged and saved (marked incomplete), and the gateway exits;
//! - requests and streams cancelled by their clients leave every in-flight gauge at 0;
//! - `/ready` is 503 naming the token service while its Redis is away, and 200 again
//!   once it is back, while `/health` (liveness) stays 200 throughout;
//! - the llm service sent SIGTERM mid-stream relays the stream to its end, then exits.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chat_common::tokens;
use chat_testing::signal::Signal;
use chat_testing::stack::{self, Backing};
use chat_testing::{FakeOpenAi, OwnRedis, TestDatabase, Upstream};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Everyone's daily limit (the token service's default).
const DAILY_LIMIT: i64 = 5000;
/// The grace of gateway-1: long enough for its streams to end by themselves.
const LONG_GRACE_SECS: u64 = 10;
/// The grace of gateway-2: shorter than its stream, which is interrupted after 3 s.
const SHORT_GRACE_SECS: u64 = 4;

/// One server-sent event: its name and JSON data.
type Event = (String, Value);

struct World {
    stack: stack::Stack,
    http: reqwest::Client,
    provider: FakeOpenAi,
    /// The Redis of every service, ours to stop.
    redis: OwnRedis,
    _database: TestDatabase,
}

impl World {
    async fn start() -> anyhow::Result<Self> {
        let redis = OwnRedis::start().await?;
        let database = TestDatabase::new().await?;
        let provider = FakeOpenAi::start().await?;
        let backing = Backing {
            redis_addr: redis.addr(),
            redis_prefix: String::new(),
            mysql_dsn: database.url.clone(),
            provider_url: provider.base_url.clone(),
            model: "gpt-test".to_owned(),
        };
        let gateway = PathBuf::from(env!("CARGO_BIN_EXE_chat-gateway"));
        let env = [
            ("RUST_LOG", "info"),
            ("RATE_LIMIT_PER_MINUTE", "0"),
            ("READ_RATE_LIMIT_PER_MINUTE", "0"),
            ("FILTER_TIMEOUT_MS", "5000"),
            ("TOKEN_TIMEOUT_MS", "5000"),
            ("HISTORY_TIMEOUT_MS", "5000"),
            ("LLM_TIMEOUT_MS", "10000"),
            ("SHUTDOWN_GRACE_SECS", "10"),
        ];
        let options = stack::Processes {
            bin_dir: gateway.parent().map(PathBuf::from).unwrap_or_default(),
            gateways: 2,
            env: env
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        };
        let grace = |secs: u64| vec![("SHUTDOWN_GRACE_SECS".to_owned(), secs.to_string())];
        let stack = stack::Stack::processes_with_gateway_env(
            &backing,
            &options,
            &[grace(LONG_GRACE_SECS), grace(SHORT_GRACE_SECS)],
        )
        .await?;
        Ok(Self {
            stack,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            provider,
            redis,
            _database: database,
        })
    }

    async fn open_stream(&self, gateway: usize, user_id: &str) -> anyhow::Result<Events> {
        let response = self
            .http
            .post(format!("{}/chat/stream", self.stack.gateways[gateway]))
            .json(&json!({"user_id": user_id, "text": "tell me a long story"}))
            .send()
            .await?;
        let status = response.status();
        if status != StatusCode::OK {
            anyhow::bail!("{user_id}'s stream: {status} {}", response.text().await?);
        }
        Ok(Events::of(response))
    }

    async fn get(&self, gateway: usize, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        let response = self
            .http
            .get(format!("{}{path}", self.stack.gateways[gateway]))
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn remaining(&self, user_id: &str) -> anyhow::Result<i64> {
        let (_, body) = self.get(0, &format!("/quota?user_id={user_id}")).await?;
        body["remaining"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("no remaining in {body}"))
    }

    async fn history(&self, user_id: &str) -> anyhow::Result<Vec<Value>> {
        let (_, body) = self.get(0, &format!("/history?user_id={user_id}")).await?;
        body.as_array()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no history in {body}"))
    }

    /// The sum of every series of `name` on the `/metrics` of process `process`.
    async fn gauge(&self, process: &str, name: &str) -> anyhow::Result<f64> {
        let (_, url) = self
            .stack
            .metrics
            .iter()
            .find(|(named, _)| named == process)
            .ok_or_else(|| anyhow::anyhow!("no process {process}"))?;
        let text = self.http.get(url).send().await?.text().await?;
        Ok(text
            .lines()
            .filter(|line| line.split([' ', '{']).next() == Some(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Whether a new TCP connection to gateway `gateway` is refused.
    async fn refuses_connections(&self, gateway: usize) -> bool {
        let address = self.stack.gateways[gateway].trim_start_matches("http://");
        tokio::net::TcpStream::connect(address).await.is_err()
    }
}

/// The events of one SSE response, read as they come.
struct Events {
    bytes: futures::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buffer: String,
    seen: Vec<Event>,
}

impl Events {
    fn of(response: reqwest::Response) -> Self {
        Self {
            bytes: response.bytes_stream().boxed(),
            buffer: String::new(),
            seen: Vec::new(),
        }
    }

    /// The next event, or `None` at the end of the stream.
    async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let Some((name, data)) = support::sse_event(&block) else {
                    continue; // keep-alive comment
                };
                let event = (name, serde_json::from_str(&data)?);
                self.seen.push(event.clone());
                return Ok(Some(event));
            }
            match self.bytes.next().await {
                Some(chunk) => self.buffer.push_str(&String::from_utf8_lossy(&chunk?)),
                None => return Ok(None),
            }
        }
    }

    /// Reads up to the first delta.
    async fn until_first_delta(&mut self) -> anyhow::Result<()> {
        while let Some((name, _)) = self.next().await? {
            if name == "delta" {
                return Ok(());
            }
        }
        anyhow::bail!("the stream ended before its first delta: {:?}", self.seen)
    }

    /// Reads to the end; every event seen.
    async fn read_to_the_end(mut self) -> anyhow::Result<Vec<Event>> {
        while self.next().await?.is_some() {}
        Ok(self.seen)
    }
}

fn text_of(events: &[Event]) -> String {
    events
        .iter()
        .filter(|(name, _)| name == "delta")
        .filter_map(|(_, data)| data["text"].as_str())
        .collect()
}

/// A story of `words` words, streamed one word each `pace`.
fn story(words: usize, pace: Duration) -> (String, Upstream) {
    let text: Vec<String> = (1..=words).map(|word| format!("word{word}")).collect();
    let text = text.join(" ");
    (
        text.clone(),
        Upstream::Streamed {
            text,
            chunk_delay: pace,
        },
    )
}

async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await? {
        anyhow::ensure!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_stopping_gateway_finishes_its_streams_and_readiness_follows_the_dependencies()
-> anyhow::Result<()> {
    let mut world = World::start().await?;

    // 1. SIGTERM mid-stream, a grace long enough: the stream runs to its end.
    let (full, slow) = story(16, Duration::from_millis(300));
    world.provider.then([slow]);
    let mut stream = world.open_stream(0, "finisher").await?;
    stream.until_first_delta().await?;
    world.stack.signal("gateway-1", Signal::Term).await?;
    eventually("gateway-1 refuses new connections", || async {
        Ok(world.refuses_connections(0).await)
    })
    .await?;
    assert!(
        world
            .stack
            .wait_for_exit("gateway-1", Duration::ZERO)
            .await?
            .is_none(),
        "gateway-1 still runs, draining, while it refuses new connections"
    );
    let events = stream.read_to_the_end().await?;
    assert_eq!(text_of(&events), full, "the whole reply reached the client");
    let (name, done) = events.last().cloned().unwrap_or_default();
    assert_eq!(name, "done", "{events:?}");
    assert_eq!(done["history_saved"], true, "{done}");
    let exited = world
        .stack
        .wait_for_exit("gateway-1", Duration::from_secs(LONG_GRACE_SECS))
        .await?;
    assert!(
        exited.is_some_and(|status| status.success()),
        "gateway-1 exited cleanly within its grace: {exited:?}"
    );
    world.stack.restart("gateway-1").await?;
    let used = done["usage"]["total_tokens"].as_i64().unwrap_or_default();
    assert!(used > 0, "{done}");
    assert_eq!(
        world.remaining("finisher").await?,
        DAILY_LIMIT - used,
        "charged exactly the provider's usage, the reservation settled"
    );
    assert_eq!(done["remaining"], DAILY_LIMIT - used);
    let history = world.history("finisher").await?;
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[1]["role"], "assistant");
    assert_eq!(history[1]["text"], full.as_str());
    assert_eq!(history[1]["incomplete"], false);

    // 2. A stream longer than the grace: interrupted near its end, charged and saved.
    let (full, endless) = story(80, Duration::from_millis(250));
    world.provider.then([endless]);
    let mut stream = world.open_stream(1, "interrupted").await?;
    stream.until_first_delta().await?;
    world.stack.signal("gateway-2", Signal::Term).await?;
    let events = stream.read_to_the_end().await?;
    let partial = text_of(&events);
    assert!(
        !partial.is_empty() && partial.len() < full.len() && full.starts_with(&partial),
        "a beginning of the reply: {partial:?}"
    );
    let (name, error) = events.last().cloned().unwrap_or_default();
    assert_eq!(
        name, "error",
        "the client is told the reply was cut: {events:?}"
    );
    assert_eq!(error["incomplete"], true, "{error}");
    let exited = world
        .stack
        .wait_for_exit("gateway-2", Duration::from_secs(SHORT_GRACE_SECS + 2))
        .await?;
    assert!(
        exited.is_some_and(|status| status.success()),
        "gateway-2 exited cleanly at the end of its grace: {exited:?}"
    );
    let history = world.history("interrupted").await?;
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(
        history[1]["text"],
        partial.as_str(),
        "the partial reply saved"
    );
    assert_eq!(history[1]["incomplete"], true);
    let spent = DAILY_LIMIT - world.remaining("interrupted").await?;
    // Charged the prompt and what was generated; a reservation left open would hold
    // at least MIN_RESERVATION (200) and the output cap (512).
    let generated = tokens::count(&partial) as i64;
    assert!(
        spent > generated && spent < 200,
        "charged {spent} for {generated} tokens generated"
    );

    // 3. Requests and streams whose clients leave: every in-flight gauge back at 0.
    let (_, slow) = story(30, Duration::from_millis(200));
    world
        .provider
        .then([slow, Upstream::Slow(Duration::from_secs(2))]);
    let mut stream = world.open_stream(0, "leaver").await?;
    stream.until_first_delta().await?;
    drop(stream);
    let impatient = world
        .http
        .post(format!("{}/chat", world.stack.gateway()))
        .timeout(Duration::from_millis(500))
        .json(&json!({"user_id": "leaver", "text": "anyone there?"}))
        .send()
        .await;
    assert!(impatient.is_err_and(|error| error.is_timeout()));
    for (process, gauge) in [
        ("gateway-1", "gateway_streams_open"),
        ("gateway-1", "http_server_active_requests"),
        ("llm", "rpc_server_active_requests"),
        ("token", "rpc_server_active_requests"),
        ("history", "rpc_server_active_requests"),
    ] {
        eventually(&format!("{gauge} of {process} back at 0"), || async {
            Ok(world.gauge(process, gauge).await? == 0.0)
        })
        .await?;
    }

    // 4. Readiness follows the dependencies; liveness does not.
    let (status, body) = world.get(0, "/ready").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    world.redis.stop().await?;
    eventually("/ready is 503 naming the token service", || async {
        let (status, body) = world.get(0, "/ready").await?;
        Ok(status == StatusCode::SERVICE_UNAVAILABLE
            && body["down"]
                .as_array()
                .is_some_and(|down| down.contains(&json!("token"))))
    })
    .await?;
    let (status, _) = world.get(0, "/health").await?;
    assert_eq!(status, StatusCode::OK, "alive while not ready");
    world.redis.resume().await?;
    eventually("/ready is 200 again", || async {
        Ok(world.get(0, "/ready").await?.0 == StatusCode::OK)
    })
    .await?;

    // 5. A gRPC service stopping finishes its calls in flight too: the llm service sent
    // SIGTERM mid-stream relays the stream to its end, then exits.
    let (full, slow) = story(12, Duration::from_millis(250));
    world.provider.then([slow]);
    let mut stream = world.open_stream(0, "llm-stopped").await?;
    stream.until_first_delta().await?;
    world.stack.signal("llm", Signal::Term).await?;
    let events = stream.read_to_the_end().await?;
    assert_eq!(text_of(&events), full, "the whole reply reached the client");
    assert_eq!(events.last().map(|(name, _)| name.as_str()), Some("done"));
    let exited = world
        .stack
        .wait_for_exit("llm", Duration::from_secs(LONG_GRACE_SECS))
        .await?;
    assert!(
        exited.is_some_and(|status| status.success()),
        "the llm service exited cleanly within its grace: {exited:?}"
    );
    world.stack.restart("llm").await?;
    Ok(())
}

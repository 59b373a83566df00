//! A closed-loop load generator: `concurrency` clients, each sending its next request
//! as soon as the previous one is answered, for a fixed time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use chat_testing::Marks;

use crate::MODEL;

/// What is measured.
#[derive(Debug, Clone)]
pub enum Target {
    /// The provider called directly: the floor.
    Upstream(String),
    /// `POST /chat` on these gateways, spread over them.
    Chat(Vec<String>),
    /// `POST /chat/stream` on these gateways, read to the final event.
    Stream(Vec<String>),
    /// `POST /v1/chat/completions` on these gateways, the whole answer.
    V1(Vec<String>),
    /// The same with `stream: true`, read to `data: [DONE]`.
    V1Stream(Vec<String>),
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Upstream(_) => "upstream",
            Self::Chat(_) => "chat",
            Self::Stream(_) => "stream",
            Self::V1(_) => "v1",
            Self::V1Stream(_) => "v1 stream",
        }
    }
}

/// Who the simulated clients are to the gateway.
#[derive(Clone)]
pub enum Callers {
    /// `AUTH_MODE=required`: client `i` sends `keys[i % keys.len()]` as its bearer key
    /// and acts as that key's user.
    Keys(Arc<Vec<String>>),
    /// `AUTH_MODE=none`: client `i` names `users[i % users.len()]` in the body.
    Named(Arc<Vec<String>>),
}

/// The requests of one run.
#[derive(Debug, Default)]
pub struct Sample {
    pub latencies_us: Vec<u64>,
    pub errors: u64,
    /// Answered at once 503 or 429 (shed at admission or rate limited): not errors, and
    /// not in the latencies, which are the admitted requests'.
    pub shed: u64,
    pub elapsed: Duration,
    /// Streams at concurrency 1: the provider's first chunk → the client's first delta.
    pub first_delta_lag_us: Vec<u64>,
    /// Streams at concurrency 1: the provider's last chunk → the client's final event.
    pub done_lag_us: Vec<u64>,
}

impl Sample {
    fn merge(&mut self, other: Sample) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.shed += other.shed;
        self.first_delta_lag_us.extend(other.first_delta_lag_us);
        self.done_lag_us.extend(other.done_lag_us);
    }

    /// Adds a later run of the same case: its requests and its time.
    pub fn add(&mut self, other: Sample) {
        self.elapsed += other.elapsed;
        self.merge(other);
    }
}

const TEXT: &str = "hello from the benchmark";

/// Runs `concurrency` clients against `target` for `duration`, as `callers`.
pub async fn run(
    client: &reqwest::Client,
    target: &Target,
    callers: &Callers,
    concurrency: usize,
    duration: Duration,
    marks: Option<Arc<Marks>>,
) -> Sample {
    let started = Instant::now();
    let deadline = started + duration;
    let workers = (0..concurrency).map(|worker| {
        let (client, target, marks) = (client.clone(), target.clone(), marks.clone());
        let caller = Caller::of(callers, worker);
        tokio::spawn(async move {
            let mut sample = Sample::default();
            while Instant::now() < deadline {
                match one(&client, &target, worker, &caller, marks.as_deref()).await {
                    Ok((latency, lags)) => {
                        sample.latencies_us.push(latency.as_micros() as u64);
                        if let Some((first, done)) = lags {
                            sample.first_delta_lag_us.push(first.as_micros() as u64);
                            sample.done_lag_us.push(done.as_micros() as u64);
                        }
                    }
                    Err(error) if error.is::<Shed>() => {
                        sample.shed += 1;
                        // A client told to come back does not hammer at once.
                        tokio::time::sleep(SHED_BACKOFF).await;
                    }
                    Err(_) => {
                        sample.errors += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            sample
        })
    });
    let mut total = Sample::default();
    for worker in futures::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
    {
        total.merge(worker);
    }
    total.elapsed = started.elapsed();
    total
}

type Lags = Option<(Duration, Duration)>;

/// A request refused at once with 503 or 429, as the gateway sheds load.
#[derive(Debug)]
struct Shed;

impl std::fmt::Display for Shed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("shed: 429 or 503 at once")
    }
}

impl std::error::Error for Shed {}

/// How much of a failed answer's body its error keeps.
const ERROR_BODY_CHARS: usize = 160;

/// How long a shed client waits before its next request.
const SHED_BACKOFF: Duration = Duration::from_millis(10);

/// The `worker`th of `values`, round the list; empty if there is none.
fn nth(values: &[String], worker: usize) -> String {
    values
        .get(worker % values.len().max(1))
        .cloned()
        .unwrap_or_default()
}

/// One client's credential: a bearer key, or a user id in the body.
pub(crate) enum Caller {
    Key(String),
    Named(String),
}

impl Caller {
    /// Who client `worker` is among `callers`.
    pub(crate) fn of(callers: &Callers, worker: usize) -> Self {
        match callers {
            Callers::Keys(keys) => Self::Key(nth(keys, worker)),
            Callers::Named(users) => Self::Named(nth(users, worker)),
        }
    }

    fn body(&self) -> serde_json::Value {
        match self {
            Self::Key(_) => serde_json::json!({"text": TEXT}),
            Self::Named(user) => serde_json::json!({"user_id": user, "text": TEXT}),
        }
    }

    /// The body of a `/v1` completion; in trust mode `user` names the acting user.
    fn openai_body(&self, stream: bool) -> serde_json::Value {
        let mut body = serde_json::json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": TEXT}],
            "stream": stream,
        });
        if let Self::Named(user) = self {
            body["user"] = user.clone().into();
        }
        body
    }
}

/// One request of client `worker` to `target`, read to its end: its latency, and with
/// `marks` the stream's lags behind the provider. A 429 or 503 is an error of type
/// `Shed`; any other non-2xx, or a stream without its final event, is an error too.
pub(crate) async fn one(
    client: &reqwest::Client,
    target: &Target,
    worker: usize,
    caller: &Caller,
    marks: Option<&Marks>,
) -> anyhow::Result<(Duration, Lags)> {
    let started = Instant::now();
    let (url, body) = request_body(target, worker, caller);
    let mut request = client.post(url).json(&body);
    if let Caller::Key(key) = caller
        && !matches!(target, Target::Upstream(_))
    {
        request = request.bearer_auth(key);
    }
    let response = request.send().await?;
    if matches!(response.status().as_u16(), 429 | 503) && !matches!(target, Target::Upstream(_)) {
        return Err(Shed.into());
    }
    let status = response.status();
    if !status.is_success() {
        // The body names the cause (its error code); its start is enough.
        let body = response.text().await.unwrap_or_default();
        let body: String = body.chars().take(ERROR_BODY_CHARS).collect();
        anyhow::bail!("status {status}: {body}");
    }
    match target {
        Target::Upstream(_) | Target::Chat(_) | Target::V1(_) => {
            response.bytes().await?;
            Ok((started.elapsed(), None))
        }
        Target::Stream(_) | Target::V1Stream(_) => {
            let openai = matches!(target, Target::V1Stream(_));
            let (first_delta, done) = read_stream(response, openai).await?;
            let lags = marks.map(|marks| {
                let (first_chunk, last_chunk) = marks.last_stream();
                (
                    first_delta.saturating_duration_since(first_chunk),
                    done.saturating_duration_since(last_chunk),
                )
            });
            Ok((done - started, lags))
        }
    }
}

/// Where `worker`'s request to `target` goes (gateways by turns), and its body.
fn request_body(target: &Target, worker: usize, caller: &Caller) -> (String, serde_json::Value) {
    match target {
        Target::Upstream(base) => (
            format!("{base}/chat/completions"),
            serde_json::json!({
                "model": MODEL,
                "messages": [{"role": "user", "content": TEXT}],
                "max_completion_tokens": 512
            }),
        ),
        Target::Chat(gateways) => (
            format!("{}/chat", gateways[worker % gateways.len()]),
            caller.body(),
        ),
        Target::Stream(gateways) => (
            format!("{}/chat/stream", gateways[worker % gateways.len()]),
            caller.body(),
        ),
        Target::V1(gateways) | Target::V1Stream(gateways) => (
            format!("{}/v1/chat/completions", gateways[worker % gateways.len()]),
            caller.openai_body(matches!(target, Target::V1Stream(_))),
        ),
    }
}

/// Reads a stream (OpenAI's if `openai`) to its end: when its first text arrived, and
/// when its final event did.
async fn read_stream(
    response: reqwest::Response,
    openai: bool,
) -> anyhow::Result<(Instant, Instant)> {
    let (mut first_delta, mut done) = (None, None);
    let mut seen = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        seen.extend_from_slice(&chunk?);
        // OpenAI's stream opens with a role chunk: its first text is the second event.
        let delta = if openai {
            seen.windows(6).filter(|window| window == b"data: ").count() >= 2
        } else {
            contains(&seen, b"event: delta")
        };
        if first_delta.is_none() && delta {
            first_delta = Some(Instant::now());
        }
        let end: &[u8] = if openai {
            b"data: [DONE]"
        } else {
            b"event: done"
        };
        if contains(&seen, end) {
            done = Some(Instant::now());
        }
    }
    let (Some(first_delta), Some(done)) = (first_delta, done) else {
        anyhow::bail!("the stream ended without its final event");
    };
    Ok((first_delta, done))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

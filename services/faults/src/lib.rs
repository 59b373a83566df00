//! `make faults`: the whole stack as processes, on a Redis and a MariaDB of its own, under
//! a load of concurrent chats and streams, while one thing at a time fails: MySQL paused,
//! MySQL killed, Redis restarted, the llm service killed mid-stream, the provider
//! failing, the gateway sent SIGTERM mid-stream. After each: every acknowledged turn is
//! in the history once and in order, each user's spending is what they were told, no
//! reservation is left open, every answer was a success or a documented error in time,
//! and a chat succeeds again within seconds. See [`table`] for the outcomes.

pub mod checks;
pub mod client;
pub mod faults;
mod relay;
pub mod table;
mod users;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chat_testing::stack::{Backing, Processes, Stack};
use chat_testing::{FakeOpenAi, OwnMariadb, OwnRedis, Upstream};

use checks::{Conversations, Quota, Spending};
use client::{Answer, Caller, Outcome, Route};
use faults::Fault;
use table::{RECOVERY_WITHIN, Row};

/// The pause before every streamed word of the provider's answers: a chat takes about
/// a second, so that every fault finds chats and streams in flight.
const PACE: Duration = Duration::from_millis(80);
/// Load before the fault, and at least this long after it ended.
const WARM_UP: Duration = Duration::from_secs(3);
const AFTER: Duration = Duration::from_secs(3);
/// How long the stack may take to be healthy again before the next fault.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);
/// Pause of a client after an answer that was not a success, so that a dead gateway is
/// not hammered.
const BACK_OFF: Duration = Duration::from_millis(200);

/// The model the stack offers and the load asks for.
pub const MODEL: &str = "gpt-test";

/// What the provider does when nothing fails: echoes, paced.
pub fn provider_behaviour() -> Upstream {
    Upstream::PacedEcho(PACE)
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Where the `chat-*` debug binaries are.
    pub bin_dir: PathBuf,
    /// Where the MariaDB data directory goes (under `target/`).
    pub work_dir: PathBuf,
    /// The faults to run, in order.
    pub faults: Vec<Fault>,
    pub users: usize,
    /// Each user's clients: the first sends `POST /chat`, the second `/chat/stream`, the
    /// third `/v1/chat/completions`, the fourth `/chat` again, ...
    pub clients_per_user: usize,
}

/// Everything the faults are done to, and the users of the load.
pub struct World {
    pub stack: Stack,
    pub mariadb: OwnMariadb,
    pub redis: OwnRedis,
    pub provider: FakeOpenAi,
    /// What the llm service reaches the provider through.
    pub relay: relay::Relay,
    http: reqwest::Client,
    callers: Vec<Caller>,
    probe: Caller,
    quota: Quota,
    /// How the gateway took its SIGTERM, for the notes.
    pub gateway_exit: Option<String>,
}

/// Starts everything, runs every fault of `options` in turn, and answers a row each.
pub async fn run(options: &Options) -> anyhow::Result<Vec<Row>> {
    let mut world = start(options).await?;
    let mut rows = Vec::new();
    for fault in &options.faults {
        let row = match phase(&mut world, options, *fault).await {
            Ok(row) => row,
            Err(error) => {
                let mut row = Row::new(*fault);
                row.aborted = Some("not run to the end");
                row.notes.push(format!("not run to the end: {error:#}"));
                row
            }
        };
        progress(&format!(
            "{}: {}",
            fault.slug(),
            if row.failures().is_empty() {
                "pass".to_owned()
            } else {
                row.failures().join(", ")
            }
        ));
        rows.push(row);
    }
    Ok(rows)
}

/// A line of progress, timed so that it can be matched with the services' logs.
#[allow(clippy::print_stdout)]
fn progress(line: &str) {
    println!(
        "faults: {} {line}",
        jiff::Timestamp::now().strftime("%H:%M:%S%.3f")
    );
}

async fn start(options: &Options) -> anyhow::Result<World> {
    std::fs::create_dir_all(&options.work_dir)?;
    // The launcher appends each process's log there: start this run's afresh.
    if let Some(logs) = std::env::var_os("CHAT_STACK_LOG_DIR") {
        for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|ext| ext == "log") {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    let redis = OwnRedis::start_persistent().await?;
    let mariadb = OwnMariadb::start(&options.work_dir).await?;
    let provider = FakeOpenAi::start().await?;
    provider.always(provider_behaviour());
    let provider_addr = reqwest::Url::parse(&provider.base_url)?
        .socket_addrs(|| None)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no address in {}", provider.base_url))?;
    let relay = relay::Relay::start(provider_addr).await?;
    let admin_key = users::random_admin_key();
    let prefix = "faults:".to_owned();
    let backing = Backing {
        redis_addr: redis.addr(),
        redis_prefix: prefix.clone(),
        mysql_dsn: mariadb.url("chatdb"),
        provider_url: format!("http://127.0.0.1:{}/v1", relay.port),
        model: MODEL.to_owned(),
    };
    let env: Vec<(String, String)> = [
        ("AUTH_MODE", "required"),
        ("ADMIN_API_KEY", admin_key.as_str()),
        ("RATE_LIMIT_PER_MINUTE", "0"),
        ("READ_RATE_LIMIT_PER_MINUTE", "0"),
        ("ADDRESS_RATE_LIMIT_PER_MINUTE", "0"),
        // Longer than a chat (LLM_TIMEOUT_MS and the settlement's retries), short
        // enough that a reservation nobody settled is seen within the run.
        ("RESERVATION_TTL_SECS", "20"),
        ("SWEEP_INTERVAL_MS", "1000"),
        ("SHUTDOWN_GRACE_SECS", "10"),
        ("RUST_LOG", "info"),
    ]
    .iter()
    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
    .collect();
    let processes = Processes {
        bin_dir: options.bin_dir.clone(),
        gateways: 1,
        env,
    };
    progress("starting the stack");
    let stack = Stack::processes(&backing, &processes).await?;
    // No pooled connections: after a gateway restart a pooled one would be dead, and its
    // error the client's, not the gateway's.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .tcp_nodelay(true)
        .build()?;
    let gateway = stack.gateway().to_owned();
    let mut callers = Vec::new();
    for index in 0..options.users {
        let user_id = format!("faults-u{index}");
        callers.push(users::make_user(&http, &gateway, &admin_key, &user_id).await?);
    }
    let probe = users::make_user(&http, &gateway, &admin_key, "faults-probe").await?;
    let quota = Quota::new(&backing.redis_addr, &prefix)?;
    Ok(World {
        stack,
        mariadb,
        redis,
        provider,
        relay,
        http,
        callers,
        probe,
        quota,
        gateway_exit: None,
    })
}

/// One fault on a healthy, loaded stack, and its checks.
async fn phase(world: &mut World, options: &Options, fault: Fault) -> anyhow::Result<Row> {
    progress(&format!("{}: {}", fault.slug(), fault.title()));
    let mut row = Row::new(fault);
    // Healthy first: a chat goes through, and what the last fault left has settled.
    let probe_conversation = new_conversation(world, &world.probe, fault).await?;
    if probe_until_saved(world, &probe_conversation, HEALTHY_WITHIN, 0)
        .await
        .0
        .is_none()
    {
        anyhow::bail!("the stack is not healthy before {}", fault.slug());
    }
    let swept_before = world.quota.settled().await.map_or(0, |(_, swept)| swept);

    let mut conversations = BTreeMap::new();
    let mut routes = BTreeMap::new();
    let mut client = 0;
    for caller in &world.callers {
        for index in 0..options.clients_per_user {
            let route = [Route::Chat, Route::Stream, Route::V1][index % 3];
            let conversation = match route {
                Route::V1 => format!("faults-{}-c{client}", fault.slug()),
                Route::Chat | Route::Stream => new_conversation(world, caller, fault).await?,
            };
            conversations.insert(client, (caller.clone(), conversation));
            routes.insert(client, route);
            client += 1;
        }
    }
    let probe_client = client;
    let probe_conversation = new_conversation(world, &world.probe, fault).await?;
    conversations.insert(
        probe_client,
        (world.probe.clone(), probe_conversation.clone()),
    );
    let mut spent_before = BTreeMap::new();
    for caller in world.callers.iter().chain([&world.probe]) {
        spent_before.insert(
            caller.user_id.clone(),
            world.quota.spent(&caller.user_id).await?,
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = conversations
        .iter()
        .filter(|(client, _)| **client != probe_client)
        .map(|(client, (caller, conversation))| {
            tokio::spawn(client_loop(
                world.http.clone(),
                caller.clone(),
                *client,
                routes.get(client).copied().unwrap_or(Route::Chat),
                conversation.clone(),
                fault.slug(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(WARM_UP).await;
    progress(&format!("{}: fault begins", fault.slug()));
    let began = Instant::now();
    let injected = fault.inject(world).await;
    let ended = Instant::now();
    progress(&format!("{}: fault ended", fault.slug()));
    let (recovery, probes) =
        probe_until_saved(world, &probe_conversation, RECOVERY_WITHIN, probe_client).await;
    row.recovery = recovery;
    tokio::time::sleep((ended + AFTER).saturating_duration_since(Instant::now())).await;
    stop.store(true, Ordering::SeqCst);
    let mut answers = probes;
    for task in load {
        answers.extend(task.await?);
    }
    injected?;
    if let Some(exit) = world.gateway_exit.take() {
        row.notes.push(format!("gateway {exit}"));
    }
    row.notes.push(during(&answers, began, ended));
    check(
        world,
        &mut row,
        &answers,
        &conversations,
        &spent_before,
        swept_before,
    )
    .await;
    Ok(row)
}

/// A new conversation for `caller`, retried for a while: the last fault may still be
/// healing (that it takes long is the next fault's first note).
async fn new_conversation(world: &World, caller: &Caller, fault: Fault) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        match caller.new_conversation(&world.http, fault.slug()).await {
            Ok(id) => return Ok(id),
            Err(error) if started.elapsed() > HEALTHY_WITHIN => {
                return Err(error.context(format!(
                    "no conversation could be made within {HEALTHY_WITHIN:?}"
                )));
            }
            Err(_) => tokio::time::sleep(BACK_OFF).await,
        }
    }
}

/// One client: chats in its conversation, one after another, until told to stop.
async fn client_loop(
    http: reqwest::Client,
    caller: Caller,
    client: usize,
    route: Route,
    conversation: String,
    slug: &'static str,
    stop: Arc<AtomicBool>,
) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut seq = 0;
    while !stop.load(Ordering::SeqCst) {
        let answer = one_chat(&http, &caller, client, seq, route, &conversation, slug).await;
        let failed = !matches!(answer.outcome, Outcome::Ok { .. });
        answers.push(answer);
        seq += 1;
        if failed {
            tokio::time::sleep(BACK_OFF).await;
        }
    }
    answers
}

async fn one_chat(
    http: &reqwest::Client,
    caller: &Caller,
    client: usize,
    seq: usize,
    route: Route,
    conversation: &str,
    slug: &str,
) -> Answer {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let text = format!(
        "{slug} client {client} turn {seq} {} keep this turn",
        nonce.get(..8).unwrap_or_default()
    );
    let sent_at = Instant::now();
    let (latency, outcome) = caller.chat(http, route, conversation, &text).await;
    Answer {
        client,
        seq,
        user_id: caller.user_id.clone(),
        conversation_id: conversation.to_owned(),
        route,
        text,
        sent_at,
        latency,
        outcome,
    }
}

/// What the chats in flight when the fault began, and those sent while it lasted,
/// answered: the evidence that the fault hit work under way.
fn during(answers: &[Answer], began: Instant, ended: Instant) -> String {
    let in_flight: Vec<&Answer> = answers
        .iter()
        .filter(|answer| answer.sent_at <= began && answer.sent_at + answer.latency > began)
        .collect();
    let streams = in_flight
        .iter()
        .filter(|answer| answer.route == Route::Stream)
        .count();
    let in_flight_ok = in_flight
        .iter()
        .filter(|answer| matches!(answer.outcome, Outcome::Ok { .. }))
        .count();
    let meanwhile: Vec<&Answer> = answers
        .iter()
        .filter(|answer| answer.sent_at > began && answer.sent_at < ended)
        .collect();
    let meanwhile_ok = meanwhile
        .iter()
        .filter(|answer| matches!(answer.outcome, Outcome::Ok { .. }))
        .count();
    format!(
        "{} chats in flight when it began ({streams} streams), {in_flight_ok} of them answered ok; \
         {} sent during the fault ({:.1} s), {meanwhile_ok} ok",
        in_flight.len(),
        meanwhile.len(),
        ended.duration_since(began).as_secs_f64()
    )
}

/// Probe chats until one is answered and saved and the conversation reads back, for at
/// most `within`: how long that took, and the probes' answers (checked as any other
/// client's). A probe under way when the time is up is let finish (a chat cut off by
/// its client is still charged, and must be counted), but it does not count.
async fn probe_until_saved(
    world: &World,
    conversation: &str,
    within: Duration,
    client: usize,
) -> (Option<Duration>, Vec<Answer>) {
    let started = Instant::now();
    let mut answers = Vec::new();
    let mut seq = 0;
    while started.elapsed() < within {
        let answer = one_chat(
            &world.http,
            &world.probe,
            client,
            seq,
            Route::Chat,
            conversation,
            "probe",
        )
        .await;
        seq += 1;
        let saved = answer.acknowledged();
        answers.push(answer);
        // Serving normally: the chat is saved, and the conversation can be read back.
        if saved
            && world
                .probe
                .messages(&world.http, conversation)
                .await
                .is_ok()
        {
            let took = started.elapsed();
            return ((took <= within).then_some(took), answers);
        }
        tokio::time::sleep(BACK_OFF).await;
    }
    (None, answers)
}

/// Counts the answers, then checks the history, the spending and the reservations.
async fn check(
    world: &World,
    row: &mut Row,
    answers: &[Answer],
    conversations: &BTreeMap<usize, (Caller, String)>,
    spent_before: &BTreeMap<String, i64>,
    swept_before: usize,
) {
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut undocumented: BTreeMap<String, usize> = BTreeMap::new();
    for answer in answers {
        row.answers += 1;
        if answer.hung() {
            row.hangs += 1;
        }
        match &answer.outcome {
            Outcome::Ok { history_saved, .. } => {
                row.ok += 1;
                row.saved_false += usize::from(*history_saved == Some(false));
            }
            Outcome::Documented {
                status,
                code,
                charged_unknown,
            } => {
                row.documented += 1;
                let status = if *charged_unknown {
                    "event:error".to_owned()
                } else {
                    status.to_string()
                };
                *errors.entry(format!("{status} {code}")).or_default() += 1;
            }
            Outcome::Refused => row.refused += 1,
            Outcome::Undocumented(what) => {
                row.undocumented += 1;
                *undocumented.entry(what.clone()).or_default() += 1;
            }
            Outcome::Hang => {}
        }
    }
    if !errors.is_empty() {
        row.notes.push(format!("errors: {}", counted(&errors)));
    }
    if !undocumented.is_empty() {
        row.notes
            .push(format!("undocumented: {}", counted(&undocumented)));
    }
    let slowest = answers.iter().map(|answer| answer.latency).max();
    if let Some(slowest) = slowest {
        row.notes
            .push(format!("slowest answer {:.1} s", slowest.as_secs_f64()));
    }

    match world.quota.settled().await {
        Ok((open, swept)) => {
            row.open_reservations = open;
            let new_swept = swept.saturating_sub(swept_before);
            if new_swept > 0 {
                row.notes.push(format!(
                    "{new_swept} reservations refunded by the sweeper (their settlement never came)"
                ));
            }
        }
        Err(error) => row
            .notes
            .push(format!("reservations unreadable: {error:#}")),
    }
    for (user_id, before) in spent_before {
        let theirs: Vec<&Answer> = answers.iter().filter(|a| &a.user_id == user_id).collect();
        let told = theirs
            .iter()
            .map(|answer| match answer.outcome {
                Outcome::Ok { total_tokens, .. } => total_tokens,
                _ => 0,
            })
            .sum();
        let untold = theirs.iter().filter(|a| a.outcome.charge_unknown()).count();
        let spent = match world.quota.spent(user_id).await {
            Ok(after) => after - before,
            Err(error) => {
                row.notes.push(format!("spending unreadable: {error:#}"));
                row.spending_mismatch += 1;
                continue;
            }
        };
        let spending = Spending {
            user_id: user_id.clone(),
            spent,
            told,
            untold,
        };
        if !spending.matches() {
            row.spending_mismatch += 1;
            row.notes.push(format!(
                "{}: spent {} but told {} ({} untold)",
                spending.user_id, spending.spent, spending.told, spending.untold
            ));
        }
    }

    let conversations = Conversations::of(answers, conversations);
    match checks::history_in_mysql(&world.mariadb.url("chatdb"), &conversations).await {
        Ok(faults) => row.mysql = faults,
        Err(error) => {
            row.notes
                .push(format!("chat_history unreadable: {error:#}"));
            row.aborted = Some("chat_history unreadable");
        }
    }
    match checks::history_in_api(&world.http, &conversations).await {
        Ok(faults) => row.api = faults,
        Err(error) => {
            row.notes
                .push(format!("conversation API failed: {error:#}"));
            row.aborted = Some("conversation API failed");
        }
    }
    if !row.mysql.examples.is_empty() {
        row.notes
            .push(format!("in MySQL: {}", row.mysql.examples.join(", ")));
    }
    if !row.api.examples.is_empty() {
        row.notes
            .push(format!("through the API: {}", row.api.examples.join(", ")));
    }
}

/// `a ×3, b ×1`.
fn counted(counts: &BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(what, count)| format!("{what} ×{count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

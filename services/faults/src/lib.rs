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
mod load;
mod relay;
pub mod table;
mod users;
mod verdict;
mod world;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chat_testing::stack::Stack;
use chat_testing::{FakeOpenAi, OwnMariadb, OwnRedis, Upstream};

use checks::Quota;
use client::Caller;
use faults::Fault;
use load::{Load, probe_until_saved};
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
    let mut world = world::start(options).await?;
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

/// One fault on a healthy, loaded stack, and its checks.
async fn phase(world: &mut World, options: &Options, fault: Fault) -> anyhow::Result<Row> {
    progress(&format!("{}: {}", fault.slug(), fault.title()));
    let mut row = Row::new(fault);
    let swept_before = healthy_first(world, fault).await?;
    let load = Load::plan(world, options, fault).await?;
    let spent_before = spent_by_user(world).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load.start(world, fault, &stop);
    tokio::time::sleep(WARM_UP).await;
    progress(&format!("{}: fault begins", fault.slug()));
    let began = Instant::now();
    let injected = fault.inject(world).await;
    let ended = Instant::now();
    progress(&format!("{}: fault ended", fault.slug()));
    let (recovery, probes) = probe_until_saved(
        world,
        &load.probe_conversation,
        RECOVERY_WITHIN,
        load.probe_client,
    )
    .await;
    row.recovery = recovery;
    tokio::time::sleep((ended + AFTER).saturating_duration_since(Instant::now())).await;
    stop.store(true, Ordering::SeqCst);
    let mut answers = probes;
    for task in clients {
        answers.extend(task.await?);
    }
    injected?;
    if let Some(exit) = world.gateway_exit.take() {
        row.notes.push(format!("gateway {exit}"));
    }
    row.notes.push(load::during(&answers, began, ended));
    verdict::check(
        world,
        &mut row,
        &answers,
        &load.conversations,
        &spent_before,
        swept_before,
    )
    .await;
    Ok(row)
}

/// Healthy first: a chat goes through, and what the last fault left has settled. The
/// reservations the sweeper refunded so far.
async fn healthy_first(world: &World, fault: Fault) -> anyhow::Result<usize> {
    let probe_conversation = load::new_conversation(world, &world.probe, fault).await?;
    if probe_until_saved(world, &probe_conversation, HEALTHY_WITHIN, 0)
        .await
        .0
        .is_none()
    {
        anyhow::bail!("the stack is not healthy before {}", fault.slug());
    }
    Ok(world.quota.settled().await.map_or(0, |(_, swept)| swept))
}

/// What each user of the load, and the probe's, has spent so far.
async fn spent_by_user(world: &World) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut spent_before = BTreeMap::new();
    for caller in world.callers.iter().chain([&world.probe]) {
        spent_before.insert(
            caller.user_id.clone(),
            world.quota.spent(&caller.user_id).await?,
        );
    }
    Ok(spent_before)
}

//! `make soak`: held load. Sixteen clients, each a user of its own with an API key, half
//! sending `POST /chat` and half `POST /chat/stream` in a closed loop for ten minutes,
//! through one gateway in front of every service as its own process, against the local
//! Redis and MariaDB and the zero-latency local provider. Nothing scrapes `/metrics` in
//! the first half; in the second a scraper fetches every service's every second.
//!
//! Meanwhile every service's resident memory is sampled. After the run it checks that
//! memory is flat after warm-up (the least-squares slope, by process), that no request
//! failed, and that the latency percentiles of the last window are within 20 % of the
//! first's ([`analysis`] has the thresholds and why).

pub mod analysis;
pub mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_testing::stack::Stack;
use tokio::task::JoinHandle;

use crate::load::{self, Caller, Callers, Target};
use crate::setup;
use analysis::Timeline;
pub use report::SoakReport;
use report::{Observed, RssSample, ScrapeRow};

/// How a soak runs.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Where the `chat-*` binaries are.
    pub bin_dir: PathBuf,
    /// How long the load runs (`SOAK_SECS`).
    pub seconds: f64,
    /// Closed-loop clients: the first half chat, the rest stream.
    pub clients: usize,
    pub redis_addr: String,
    pub mysql_dsn: String,
}

impl SoakOptions {
    /// Ten minutes at sixteen clients, as `make soak` runs it.
    pub fn full(bin_dir: PathBuf, redis_addr: String, mysql_dsn: String) -> Self {
        Self {
            bin_dir,
            seconds: 600.0,
            clients: 16,
            redis_addr,
            mysql_dsn,
        }
    }
}

/// How often every process's resident memory is read.
const RSS_EVERY: Duration = Duration::from_secs(2);

/// How often the scraper fetches every `/metrics`, as a Prometheus with a short interval.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// A request or a scrape not answered within this is an error (a hang), and the soak
/// goes on instead of waiting for it.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// A client pauses this long after an error, so that a broken stack is not hammered.
const AFTER_ERROR: Duration = Duration::from_millis(50);

/// How many distinct error messages a client keeps.
const DISTINCT_ERRORS: usize = 20;

/// One answered request.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// When it was sent, in seconds from the start of the load.
    pub at: f64,
    pub latency_us: u64,
    pub stream: bool,
}

/// What one client saw.
#[derive(Debug, Default)]
struct ClientLog {
    records: Vec<Record>,
    /// Each failure's message, counted.
    errors: BTreeMap<String, u64>,
}

pub async fn run(options: &SoakOptions) -> anyhow::Result<SoakReport> {
    check_options(options)?;
    let timeline = Timeline::new(options.seconds);
    let upstream = setup::start_provider().await?;
    let admin_key = setup::random_admin_key()?;
    let stack = start_stack(options, &upstream.base_url, &admin_key).await?;
    let client = setup::http_client()?;
    let keys: Vec<String> =
        setup::make_users(&client, stack.gateway(), &admin_key, options.clients)
            .await?
            .into_iter()
            .map(|(_, key)| key)
            .collect();
    let callers = Callers::Keys(Arc::new(keys));

    let cpu_before = stack.cpu_seconds();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(options.seconds);
    let clients = start_clients(options, &client, &stack, &callers, started, deadline);
    let scraper = tokio::spawn(scrape(
        client.clone(),
        stack.metrics.clone(),
        started + Duration::from_secs_f64(timeline.scrape_from),
        deadline,
    ));
    let mut observed = Observed {
        rss: sample_rss(&stack, started, deadline).await,
        ..Observed::default()
    };
    for log in clients {
        let log = log.await?;
        observed.records.extend(log.records);
        for (message, count) in log.errors {
            *observed.errors.entry(message).or_default() += count;
        }
    }
    observed.cpu_seconds = cpu_spent(&stack, &cpu_before);
    observed.scrapes = scraper.await?;
    Ok(SoakReport::new(options, timeline, observed))
}

/// Long enough for a warm-up and two windows, and a client of each kind.
fn check_options(options: &SoakOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        options.seconds >= analysis::MIN_SECONDS,
        "a soak needs at least {} s (a warm-up, then two windows)",
        analysis::MIN_SECONDS
    );
    anyhow::ensure!(
        options.clients >= 2,
        "a soak needs two clients, one chatting, one streaming"
    );
    Ok(())
}

/// Every service as its own process, with one gateway, authentication on.
async fn start_stack(
    options: &SoakOptions,
    provider_url: &str,
    admin_key: &str,
) -> anyhow::Result<Stack> {
    let backing = setup::backing(
        "soak",
        &options.redis_addr,
        &options.mysql_dsn,
        provider_url,
    );
    let gateway_env = [setup::authenticated_env(admin_key)];
    setup::start_stack(&options.bin_dir, &backing, &gateway_env).await
}

/// The clients, the first half chatting and the second streaming, until `deadline`.
fn start_clients(
    options: &SoakOptions,
    client: &reqwest::Client,
    stack: &Stack,
    callers: &Callers,
    started: Instant,
    deadline: Instant,
) -> Vec<JoinHandle<ClientLog>> {
    let gateway = vec![stack.gateway().to_owned()];
    (0..options.clients)
        .map(|worker| {
            let target = if worker < options.clients / 2 {
                Target::Chat(gateway.clone())
            } else {
                Target::Stream(gateway.clone())
            };
            let caller = Caller::of(callers, worker);
            tokio::spawn(client_loop(
                client.clone(),
                target,
                caller,
                worker,
                started,
                deadline,
            ))
        })
        .collect()
}

/// The CPU seconds each process spent since `before`.
fn cpu_spent(stack: &Stack, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    stack
        .cpu_seconds()
        .into_iter()
        .map(|(process, after)| {
            let spent = after - before.get(&process).copied().unwrap_or(0.0);
            (process, spent)
        })
        .collect()
}

/// One client's closed loop until `deadline`: its next request as soon as the last one
/// is answered.
async fn client_loop(
    client: reqwest::Client,
    target: Target,
    caller: Caller,
    worker: usize,
    started: Instant,
    deadline: Instant,
) -> ClientLog {
    let mut log = ClientLog::default();
    let stream = matches!(target, Target::Stream(_));
    while Instant::now() < deadline {
        let at = started.elapsed().as_secs_f64();
        let answer = tokio::time::timeout(
            ANSWER_WITHIN,
            load::one(&client, &target, worker, &caller, None),
        )
        .await;
        let failure = match answer {
            Ok(Ok((latency, _))) => {
                log.records.push(Record {
                    at,
                    latency_us: latency.as_micros() as u64,
                    stream,
                });
                continue;
            }
            Ok(Err(error)) => format!("{}: {error:#}", target.name()),
            Err(_) => format!("{}: no answer within {ANSWER_WITHIN:?}", target.name()),
        };
        // Distinct messages are kept up to a bound, the rest counted together.
        let key = if log.errors.len() < DISTINCT_ERRORS || log.errors.contains_key(&failure) {
            failure
        } else {
            "other errors".to_owned()
        };
        *log.errors.entry(key).or_default() += 1;
        tokio::time::sleep(AFTER_ERROR).await;
    }
    log
}

/// Every process's resident memory every [`RSS_EVERY`] from the start to `deadline`,
/// both included.
async fn sample_rss(stack: &Stack, started: Instant, deadline: Instant) -> Vec<RssSample> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(RSS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wait = tokio::time::sleep_until(deadline.into());
        tokio::select! {
            _ = tick.tick() => {}
            () = wait => {}
        }
        samples.push(RssSample {
            at: started.elapsed().as_secs_f64(),
            kib: stack.rss_kib(),
        });
        if Instant::now() >= deadline {
            return samples;
        }
    }
}

/// From `from` to `deadline`, every `/metrics` of `targets` (process, URL) every
/// [`SCRAPE_EVERY`], all at once as Prometheus does: what each answered.
async fn scrape(
    client: reqwest::Client,
    targets: Vec<(String, String)>,
    from: Instant,
    deadline: Instant,
) -> BTreeMap<String, ScrapeRow> {
    let mut rows: BTreeMap<String, ScrapeRow> = targets
        .iter()
        .map(|(process, _)| (process.clone(), ScrapeRow::default()))
        .collect();
    tokio::time::sleep_until(from.into()).await;
    let mut tick = tokio::time::interval(SCRAPE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if Instant::now() >= deadline {
            return rows;
        }
        let fetches = targets.iter().map(|(_, url)| fetch_metrics(&client, url));
        let answers = futures::future::join_all(fetches).await;
        for ((process, _), answer) in targets.iter().zip(answers) {
            if let Some(row) = rows.get_mut(process) {
                row.record(answer);
            }
        }
    }
}

/// One scrape: the number of series served (the lines that are not comments).
async fn fetch_metrics(client: &reqwest::Client, url: &str) -> Result<usize, String> {
    let fetch = async {
        let response = client.get(url).send().await?.error_for_status()?;
        response.text().await
    };
    match tokio::time::timeout(ANSWER_WITHIN, fetch).await {
        Ok(Ok(body)) => Ok(body
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .count()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {ANSWER_WITHIN:?}")),
    }
}

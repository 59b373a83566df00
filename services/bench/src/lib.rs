//! `make bench`: what a chat costs through the whole stack (filter, quota reserve and
//! settle in Redis, history in MySQL, the llm service) next to the bare provider.
//!
//! Every case runs in several short rounds, interleaved, so that the machine's drift
//! (other load, thermal, caches) hits every case alike. The provider is a local server
//! with zero added latency, so what is measured is the stack's own cost.

pub mod load;
pub mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chat_testing::stack::{Backing, Processes, Stack};
use chat_testing::{FakeOpenAi, FixedReply};
use load::Target;
pub use report::{CaseResult, Results};

/// The model the stack asks for, and the provider's one answer.
pub const MODEL: &str = "bench-model";
const REPLY: &str =
    "Benchmarks measure what the gateway adds on top of the provider, nothing more.";

#[derive(Debug, Clone)]
pub struct Options {
    pub bin_dir: PathBuf,
    pub seconds_per_case: f64,
    pub rounds: usize,
    /// Client counts of the load cases.
    pub concurrency: Vec<usize>,
    /// Gateway process counts of the scale-out cases (the first is the baseline).
    pub gateways: Vec<usize>,
    /// Client count of the scale-out cases.
    pub scale_concurrency: usize,
    pub redis_addr: String,
    pub mysql_dsn: String,
}

impl Options {
    /// The full benchmark, as `make bench` runs it.
    pub fn full(bin_dir: PathBuf, redis_addr: String, mysql_dsn: String) -> Self {
        Self {
            bin_dir,
            seconds_per_case: 3.0,
            rounds: 3,
            concurrency: vec![32, 128],
            gateways: vec![1, 2, 4],
            scale_concurrency: 64,
            redis_addr,
            mysql_dsn,
        }
    }
}

/// One measured case, accumulated over the rounds.
struct Case {
    name: String,
    target: Target,
    concurrency: usize,
    gateways: usize,
    /// Streams at concurrency 1 read the provider's marks.
    marks: bool,
    sample: load::Sample,
    /// CPU seconds of the service processes while this case ran.
    cpu: BTreeMap<String, f64>,
}

/// Every service as its own process from `options.bin_dir`, as deployed, with as many
/// gateways as the largest scale-out case.
async fn start_stack(options: &Options, provider_url: &str) -> anyhow::Result<Stack> {
    let backing = Backing {
        redis_addr: options.redis_addr.clone(),
        redis_prefix: format!("bench:{}:", std::process::id()),
        mysql_dsn: options.mysql_dsn.clone(),
        provider_url: provider_url.to_owned(),
        model: MODEL.to_owned(),
    };
    let env = [
        ("DAILY_LIMIT", "1000000000000"),
        // The limiter runs on every request but never refuses one.
        ("RATE_LIMIT_PER_MINUTE", "1000000000"),
    ];
    let processes = Processes {
        bin_dir: options.bin_dir.clone(),
        gateways: options.gateways.iter().copied().max().unwrap_or(1),
        env: env
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
    };
    Stack::processes(&backing, &processes).await
}

pub async fn run(options: &Options) -> anyhow::Result<Results> {
    let upstream = FakeOpenAi::start_fixed(&FixedReply {
        model: MODEL.to_owned(),
        text: REPLY.to_owned(),
        prompt_tokens: 24,
        completion_tokens: 13,
    })
    .await?;
    let stack = start_stack(options, &upstream.base_url).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()?;
    let mut cases = cases(options, &upstream.base_url, &stack.gateways);
    warm_up(options, &client, &stack).await;

    let slice = Duration::from_secs_f64(options.seconds_per_case / options.rounds.max(1) as f64);
    for _round in 0..options.rounds.max(1) {
        for case in &mut cases {
            let marks = case.marks.then(|| upstream.marks());
            let before = stack.cpu_seconds();
            let sample = load::run(&client, &case.target, case.concurrency, slice, marks).await;
            for (process, after) in stack.cpu_seconds() {
                *case.cpu.entry(process.clone()).or_default() +=
                    after - before.get(&process).copied().unwrap_or(0.0);
            }
            case.sample.add(sample);
        }
    }

    let results = cases
        .into_iter()
        .map(|case| {
            CaseResult::from_sample(
                case.name,
                case.target.name(),
                case.concurrency,
                case.gateways,
                case.sample,
                case.cpu,
            )
        })
        .collect();
    Ok(Results::new(results, stack.peak_rss_mib(), options))
}

/// The cases, in the order they run and are reported: the bare provider, one gateway,
/// then the scale-out over `gateways`.
fn cases(options: &Options, upstream: &str, gateways: &[String]) -> Vec<Case> {
    let one = gateways[..1].to_vec();
    let mut cases = Vec::new();
    let mut add =
        |name: String, target: Target, concurrency: usize, gateways: usize, marks: bool| {
            cases.push(Case {
                name,
                target,
                concurrency,
                gateways,
                marks,
                sample: load::Sample::default(),
                cpu: BTreeMap::new(),
            });
        };
    let bare = || Target::Upstream(upstream.to_owned());
    add("upstream c=1".into(), bare(), 1, 0, false);
    add("chat c=1".into(), Target::Chat(one.clone()), 1, 1, false);
    add("stream c=1".into(), Target::Stream(one.clone()), 1, 1, true);
    for &concurrency in &options.concurrency {
        let name = |target: &str| format!("{target} c={concurrency}");
        add(name("upstream"), bare(), concurrency, 0, false);
        add(
            name("chat"),
            Target::Chat(one.clone()),
            concurrency,
            1,
            false,
        );
        add(
            name("stream"),
            Target::Stream(one.clone()),
            concurrency,
            1,
            false,
        );
    }
    for &count in &options.gateways {
        let concurrency = options.scale_concurrency;
        add(
            format!("chat c={concurrency} x{count} gateways"),
            Target::Chat(gateways[..count].to_vec()),
            concurrency,
            count,
            false,
        );
    }
    cases
}

/// Warms up connections, caches and the lazy parts (tokenizer, pools) before anything
/// is measured.
async fn warm_up(options: &Options, client: &reqwest::Client, stack: &Stack) {
    let warm = Duration::from_secs_f64(options.seconds_per_case.min(2.0));
    let all = Target::Chat(stack.gateways.clone());
    load::run(client, &all, 8, warm, None).await;
    let one = Target::Stream(vec![stack.gateway().to_owned()]);
    load::run(client, &one, 4, warm / 2, None).await;
}

//! `make bench`: what a chat costs through the whole stack (filter, quota reserve and
//! settle in Redis, history in MySQL, the llm service) next to the bare provider.
//!
//! Every case runs in several short rounds, interleaved, so that the machine's drift
//! (other load, thermal, caches) hits every case alike. The provider is a local server
//! with zero added latency, so what is measured is the stack's own cost.

pub mod load;
pub mod report;
pub mod stack;
pub mod upstream;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use load::Target;
pub use report::{CaseResult, Results};
use stack::{Stack, StackConfig};

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

pub async fn run(options: &Options) -> anyhow::Result<Results> {
    let epoch = Instant::now();
    let upstream = upstream::start(epoch).await?;
    let max_gateways = options.gateways.iter().copied().max().unwrap_or(1);
    let stack = Stack::start(&StackConfig {
        bin_dir: options.bin_dir.clone(),
        upstream: upstream.base_url.clone(),
        gateways: max_gateways,
        redis_addr: options.redis_addr.clone(),
        redis_prefix: format!("bench:{}:", std::process::id()),
        mysql_dsn: options.mysql_dsn.clone(),
    })
    .await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()?;
    let one = vec![stack.gateways[0].clone()];

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
    add(
        "upstream c=1".into(),
        Target::Upstream(upstream.base_url.clone()),
        1,
        0,
        false,
    );
    add("chat c=1".into(), Target::Chat(one.clone()), 1, 1, false);
    add("stream c=1".into(), Target::Stream(one.clone()), 1, 1, true);
    for &concurrency in &options.concurrency {
        add(
            format!("upstream c={concurrency}"),
            Target::Upstream(upstream.base_url.clone()),
            concurrency,
            0,
            false,
        );
        add(
            format!("chat c={concurrency}"),
            Target::Chat(one.clone()),
            concurrency,
            1,
            false,
        );
        add(
            format!("stream c={concurrency}"),
            Target::Stream(one.clone()),
            concurrency,
            1,
            false,
        );
    }
    for &gateways in &options.gateways {
        let urls = stack.gateways[..gateways].to_vec();
        let concurrency = options.scale_concurrency;
        add(
            format!("chat c={concurrency} x{gateways} gateways"),
            Target::Chat(urls),
            concurrency,
            gateways,
            false,
        );
    }

    // Warm up connections, caches and the JIT-less but lazy parts (tokenizer, pools).
    let warm = Duration::from_secs_f64(options.seconds_per_case.min(2.0));
    load::run(
        &client,
        &Target::Chat(stack.gateways.clone()),
        8,
        warm,
        None,
    )
    .await;
    load::run(&client, &Target::Stream(one.clone()), 4, warm / 2, None).await;

    let slice = Duration::from_secs_f64(options.seconds_per_case / options.rounds.max(1) as f64);
    for _round in 0..options.rounds.max(1) {
        for case in &mut cases {
            let marks = case.marks.then(|| Arc::clone(&upstream.marks));
            let before = stack.cpu_seconds();
            let sample = load::run(&client, &case.target, case.concurrency, slice, marks).await;
            for (process, after) in stack.cpu_seconds() {
                *case.cpu.entry(process.clone()).or_default() +=
                    after - before.get(&process).copied().unwrap_or(0.0);
            }
            case.sample.elapsed += sample.elapsed;
            case.sample.errors += sample.errors;
            case.sample.latencies_us.extend(sample.latencies_us);
            case.sample
                .first_delta_lag_us
                .extend(sample.first_delta_lag_us);
            case.sample.done_lag_us.extend(sample.done_lag_us);
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

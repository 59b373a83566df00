//! `make bench`: what a chat costs through the whole stack (filter, quota reserve and
//! settle in Redis, history in MySQL, the llm service) next to the bare provider.
//!
//! Every case runs in several short rounds, interleaved, so that the machine's drift
//! (other load, thermal, caches) hits every case alike. The provider is a local server
//! with zero added latency, so what is measured is the stack's own cost.
//!
//! Authentication is on, as deployed: every simulated client is a user of its own with an
//! API key made through the admin API. One more gateway, behind the same services, runs
//! in trust mode (`AUTH_MODE=none`); the same chat at one client through it, next to the
//! one with a key, is what authentication costs.

pub mod load;
pub mod report;
mod setup;
pub mod soak;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chat_testing::stack::{Processes, Stack};
use load::{Callers, Target};
pub use report::{CaseResult, Results};
use setup::{authenticated_env, owned};

/// The model the stack asks for.
pub const MODEL: &str = "bench-model";

/// The one-client chat through the trust-mode gateway, the baseline of authentication's
/// cost.
pub const TRUST_CASE: &str = "chat c=1 AUTH_MODE=none";

/// The one-client chat through a gateway with no rate limit at all: beside `chat c=1`
/// (whose limiter checks every request in Redis but never refuses), the limiter's cost.
pub const NO_LIMITER_CASE: &str = "chat c=1 no limiter";

/// The one-client chat through a gateway with `RETRIEVAL=off`: the baseline of what
/// retrieval (a keyword search beside the filter and the context lookup) adds.
pub const NO_RETRIEVAL_CASE: &str = "chat c=1 RETRIEVAL=off";

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
    callers: Callers,
    concurrency: usize,
    gateways: usize,
    /// Streams at concurrency 1 read the provider's marks.
    marks: bool,
    sample: load::Sample,
    /// CPU seconds of the service processes while this case ran.
    cpu: BTreeMap<String, f64>,
}

/// Every service as its own process from `options.bin_dir`, as deployed, with as many
/// gateways as the largest scale-out case, all with `AUTH_MODE=required`, and one more
/// in trust mode, last.
async fn start_stack(
    options: &Options,
    provider_url: &str,
    admin_key: &str,
) -> anyhow::Result<Stack> {
    let backing = setup::backing(
        "bench",
        &options.redis_addr,
        &options.mysql_dsn,
        provider_url,
    );
    let authenticated = authenticated_gateways(options);
    let mut gateway_env = vec![authenticated_env(admin_key); authenticated];
    gateway_env.push(owned(&[("AUTH_MODE", "none")]));
    // The limiter's cost: the same as gateway-1 with every rate limit off.
    let mut no_limiter = authenticated_env(admin_key);
    no_limiter.extend(owned(&[
        ("RATE_LIMIT_PER_MINUTE", "0"),
        ("READ_RATE_LIMIT_PER_MINUTE", "0"),
        ("ADDRESS_RATE_LIMIT_PER_MINUTE", "0"),
    ]));
    gateway_env.push(no_limiter);
    // Retrieval's cost: the same as gateway-1 with retrieval off.
    let mut no_retrieval = authenticated_env(admin_key);
    no_retrieval.push(("RETRIEVAL".to_owned(), "off".to_owned()));
    gateway_env.push(no_retrieval);
    // Overload: admits `overload_cap` requests at once and sheds the rest.
    let cap = overload_cap(options).to_string();
    let mut overload = authenticated_env(admin_key);
    overload.push(("MAX_CONCURRENT_REQUESTS".to_owned(), cap));
    gateway_env.push(overload);
    let processes = Processes {
        bin_dir: options.bin_dir.clone(),
        gateways: authenticated + 4,
        env: setup::common_env(),
    };
    Stack::processes_with_gateway_env(&backing, &processes, &gateway_env).await
}

/// What the overload gateway admits at once: the first load case's clients, the machine's
/// capacity; its overload case sends four times as many.
pub fn overload_cap(options: &Options) -> usize {
    options.concurrency.first().copied().unwrap_or(32).max(1)
}

/// The gateways with authentication on: as many as the largest scale-out case.
fn authenticated_gateways(options: &Options) -> usize {
    options.gateways.iter().copied().max().unwrap_or(1).max(1)
}

/// The most clients any case or the warm-up runs at once.
fn most_clients(options: &Options) -> usize {
    options
        .concurrency
        .iter()
        .copied()
        .chain([
            options.scale_concurrency,
            WARM_UP_CLIENTS,
            1,
            4 * overload_cap(options),
        ])
        .max()
        .unwrap_or(1)
}

pub async fn run(options: &Options) -> anyhow::Result<Results> {
    let upstream = setup::start_provider().await?;
    let admin_key = setup::random_admin_key()?;
    let stack = start_stack(options, &upstream.base_url, &admin_key).await?;
    let client = setup::http_client()?;
    let (users, keys): (Vec<String>, Vec<String>) =
        setup::make_users(&client, stack.gateway(), &admin_key, most_clients(options))
            .await?
            .into_iter()
            .unzip();
    let (authenticated, extra) = stack
        .gateways
        .split_at(authenticated_gateways(options).min(stack.gateways.len()));
    let (trust, extra) = extra.split_at(1.min(extra.len()));
    let (no_limiter, extra) = extra.split_at(1.min(extra.len()));
    let (no_retrieval, overload) = extra.split_at(1.min(extra.len()));
    // In trust mode each client names the same user its key stands for, so that the
    // credential is all that differs.
    let (keys, users) = (
        Callers::Keys(Arc::new(keys)),
        Callers::Named(Arc::new(users)),
    );
    let mut cases = cases(
        options,
        &upstream.base_url,
        authenticated,
        trust,
        &keys,
        &users,
    );
    add_limit_cases(&mut cases, options, no_limiter, overload, &keys);
    add_no_retrieval_case(&mut cases, no_retrieval, &keys);
    warm_up(options, &client, authenticated, trust, &keys, &users).await;
    // The limit cases' gateways: connections and credential caches, every key of theirs.
    let warm = Duration::from_secs_f64(options.seconds_per_case.min(2.0) / 2.0);
    let no_limiter = Target::Chat(no_limiter.to_vec());
    load::run(&client, &no_limiter, &keys, 1, warm, None).await;
    let no_retrieval = Target::Chat(no_retrieval.to_vec());
    load::run(&client, &no_retrieval, &keys, 1, warm, None).await;
    let overload = Target::Chat(overload.to_vec());
    let cap = overload_cap(options);
    load::run(&client, &overload, &keys, 4 * cap, warm, None).await;

    let slice = Duration::from_secs_f64(options.seconds_per_case / options.rounds.max(1) as f64);
    for _round in 0..options.rounds.max(1) {
        for case in &mut cases {
            let marks = case.marks.then(|| upstream.marks());
            let before = stack.cpu_seconds();
            let sample = load::run(
                &client,
                &case.target,
                &case.callers,
                case.concurrency,
                slice,
                marks,
            )
            .await;
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

/// The cases, in the order they run and are reported: the bare provider, one gateway
/// (and the one chat in trust mode beside it), then the scale-out over `gateways`.
/// Every case but the trust one sends `keys`; that one names `users`.
fn cases(
    options: &Options,
    upstream: &str,
    gateways: &[String],
    trust: &[String],
    keys: &Callers,
    users: &Callers,
) -> Vec<Case> {
    let one = gateways[..1].to_vec();
    let mut cases = Vec::new();
    let mut add = |name: String,
                   target: Target,
                   concurrency: usize,
                   gateways: usize,
                   marks: bool,
                   callers: &Callers| {
        cases.push(Case {
            name,
            target,
            callers: callers.clone(),
            concurrency,
            gateways,
            marks,
            sample: load::Sample::default(),
            cpu: BTreeMap::new(),
        });
    };
    let bare = || Target::Upstream(upstream.to_owned());
    add("upstream c=1".into(), bare(), 1, 0, false, keys);
    add(
        "chat c=1".into(),
        Target::Chat(one.clone()),
        1,
        1,
        false,
        keys,
    );
    add(
        TRUST_CASE.into(),
        Target::Chat(trust.to_vec()),
        1,
        1,
        false,
        users,
    );
    add(
        "stream c=1".into(),
        Target::Stream(one.clone()),
        1,
        1,
        true,
        keys,
    );
    // The OpenAI-compatible API beside /chat: the same path, OpenAI's shapes.
    add("v1 c=1".into(), Target::V1(one.clone()), 1, 1, false, keys);
    add(
        "v1 stream c=1".into(),
        Target::V1Stream(one.clone()),
        1,
        1,
        true,
        keys,
    );
    for &concurrency in &options.concurrency {
        let name = |target: &str| format!("{target} c={concurrency}");
        add(name("upstream"), bare(), concurrency, 0, false, keys);
        add(
            name("chat"),
            Target::Chat(one.clone()),
            concurrency,
            1,
            false,
            keys,
        );
        add(
            name("stream"),
            Target::Stream(one.clone()),
            concurrency,
            1,
            false,
            keys,
        );
        add(
            name("v1"),
            Target::V1(one.clone()),
            concurrency,
            1,
            false,
            keys,
        );
        add(
            name("v1 stream"),
            Target::V1Stream(one.clone()),
            concurrency,
            1,
            false,
            keys,
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
            keys,
        );
    }
    cases
}

/// The limiter's cost (one client, every limit off) and the overload: the overload
/// gateway at its cap, then at four times it.
fn add_limit_cases(
    cases: &mut Vec<Case>,
    options: &Options,
    no_limiter: &[String],
    overload: &[String],
    keys: &Callers,
) {
    let case = |name: String, gateways: &[String], concurrency: usize| Case {
        name,
        target: Target::Chat(gateways.to_vec()),
        callers: keys.clone(),
        concurrency,
        gateways: 1,
        marks: false,
        sample: load::Sample::default(),
        cpu: BTreeMap::new(),
    };
    // Beside the other one-client cases, so that drift hits them alike.
    let at = cases
        .iter()
        .position(|case| case.name == TRUST_CASE)
        .map_or(cases.len(), |index| index + 1);
    cases.insert(at, case(NO_LIMITER_CASE.to_owned(), no_limiter, 1));
    let cap = overload_cap(options);
    cases.push(case(overload_case(cap, 1), overload, cap));
    cases.push(case(overload_case(cap, 4), overload, 4 * cap));
}

/// The one-client chat through the gateway without retrieval, beside the other
/// one-client cases so that drift hits them alike.
fn add_no_retrieval_case(cases: &mut Vec<Case>, gateway: &[String], keys: &Callers) {
    let at = cases
        .iter()
        .position(|case| case.name == NO_LIMITER_CASE)
        .map_or(cases.len(), |index| index + 1);
    cases.insert(
        at,
        Case {
            name: NO_RETRIEVAL_CASE.to_owned(),
            target: Target::Chat(gateway.to_vec()),
            callers: keys.clone(),
            concurrency: 1,
            gateways: 1,
            marks: false,
            sample: load::Sample::default(),
            cpu: BTreeMap::new(),
        },
    );
}

/// The name of the overload gateway's case at `times` its cap.
pub fn overload_case(cap: usize, times: usize) -> String {
    format!("chat c={} cap={cap} ({times}x)", times * cap)
}

/// Clients of the warm-up's chats.
const WARM_UP_CLIENTS: usize = 8;

/// Warms up connections, caches (the gateways' credential cache too) and the lazy parts
/// (tokenizer, pools) before anything is measured.
async fn warm_up(
    options: &Options,
    client: &reqwest::Client,
    gateways: &[String],
    trust: &[String],
    keys: &Callers,
    users: &Callers,
) {
    let warm = Duration::from_secs_f64(options.seconds_per_case.min(2.0));
    let all = Target::Chat(gateways.to_vec());
    load::run(client, &all, keys, WARM_UP_CLIENTS, warm, None).await;
    let trust = Target::Chat(trust.to_vec());
    load::run(client, &trust, users, 1, warm / 2, None).await;
    let one = Target::Stream(gateways[..1].to_vec());
    load::run(client, &one, keys, 4, warm / 2, None).await;
}

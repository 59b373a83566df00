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

mod cases;
pub mod load;
pub mod report;
mod setup;
pub mod soak;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cases::Case;
pub use cases::overload_case;
use chat_testing::FakeOpenAi;
use chat_testing::stack::Stack;
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
    /// Only the cases named one of these, or one of these and a qualifier (`chat c=1`
    /// takes `chat c=1 RETRIEVAL=off`, not `chat c=128`); all when empty. For a quick
    /// comparison of a few cases; the derived figures of absent cases are left out.
    pub only: Vec<String>,
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
            only: Vec::new(),
            redis_addr,
            mysql_dsn,
        }
    }
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
    setup::start_stack(&options.bin_dir, &backing, &gateway_env).await
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
    let (keys, users) = callers(options, &client, &stack, &admin_key).await?;
    let gateways = Gateways::of(options, &stack);
    let mut cases = cases::cases(
        options,
        &upstream.base_url,
        gateways.authenticated,
        gateways.trust,
        &keys,
        &users,
    );
    cases::add_limit_cases(
        &mut cases,
        options,
        gateways.no_limiter,
        gateways.overload,
        &keys,
    );
    cases::add_no_retrieval_case(&mut cases, gateways.no_retrieval, &keys);
    if !options.only.is_empty() {
        cases.retain(|case| options.only.iter().any(|name| is_named(&case.name, name)));
    }
    warm_up(options, &client, &gateways, &keys, &users).await;
    // The peak memory reported is the load's: the set-up's (users made, each password
    // hashed) is not what a serving stack holds.
    stack.reset_peak_rss()?;
    measure(options, &client, &stack, &upstream, &mut cases).await;
    let peak_rss_mib = stack.peak_rss_mib();
    // What the stack holds once the load has stopped, past the time any service keeps
    // working memory for more of the same (the history service's hashing memory).
    tokio::time::sleep(IDLE_AFTER_LOAD).await;
    let idle_rss_mib = stack.rss_mib();
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
    let mut results = Results::new(results, peak_rss_mib, options);
    results.idle_rss_mib = idle_rss_mib;
    results.metrics = scrape(&client, &stack).await;
    Ok(results)
}

/// One user with a key per client the busiest case runs: as keys, and as the users
/// those keys stand for.
async fn callers(
    options: &Options,
    client: &reqwest::Client,
    stack: &Stack,
    admin_key: &str,
) -> anyhow::Result<(Callers, Callers)> {
    let (users, keys): (Vec<String>, Vec<String>) =
        setup::make_users(client, stack.gateway(), admin_key, most_clients(options))
            .await?
            .into_iter()
            .unzip();
    // In trust mode each client names the same user its key stands for, so that the
    // credential is all that differs.
    Ok((
        Callers::Keys(Arc::new(keys)),
        Callers::Named(Arc::new(users)),
    ))
}

/// How long after the last case the idle memory is read.
const IDLE_AFTER_LOAD: Duration = Duration::from_secs(6);

/// The stack's gateways by role, in the order [`start_stack`] started them.
struct Gateways<'a> {
    authenticated: &'a [String],
    trust: &'a [String],
    no_limiter: &'a [String],
    no_retrieval: &'a [String],
    overload: &'a [String],
}

impl<'a> Gateways<'a> {
    fn of(options: &Options, stack: &'a Stack) -> Self {
        let (authenticated, extra) = stack
            .gateways
            .split_at(authenticated_gateways(options).min(stack.gateways.len()));
        let (trust, extra) = extra.split_at(1.min(extra.len()));
        let (no_limiter, extra) = extra.split_at(1.min(extra.len()));
        let (no_retrieval, overload) = extra.split_at(1.min(extra.len()));
        Self {
            authenticated,
            trust,
            no_limiter,
            no_retrieval,
            overload,
        }
    }
}

/// Every case in turn, `options.rounds` times, each a slice of its time, with the CPU
/// the services spent meanwhile.
async fn measure(
    options: &Options,
    client: &reqwest::Client,
    stack: &Stack,
    upstream: &FakeOpenAi,
    cases: &mut [Case],
) {
    let slice = Duration::from_secs_f64(options.seconds_per_case / options.rounds.max(1) as f64);
    for _round in 0..options.rounds.max(1) {
        for case in cases.iter_mut() {
            let marks = case.marks.then(|| upstream.marks());
            let before = stack.cpu_seconds();
            let sample = load::run(
                client,
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
}

/// Whether `case` is `name`, or `name` and a qualifier.
fn is_named(case: &str, name: &str) -> bool {
    case.strip_prefix(name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
}

/// Every process's `/metrics` at the end of the run (the per-hop latencies say where a
/// chat's time went), by process name; a process that did not answer is left out.
async fn scrape(client: &reqwest::Client, stack: &Stack) -> Vec<(String, String)> {
    let mut scraped = Vec::new();
    for (name, url) in &stack.metrics {
        let answer = client.get(url).timeout(Duration::from_secs(5)).send().await;
        if let Ok(response) = answer
            && let Ok(text) = response.text().await
        {
            scraped.push((name.clone(), text));
        }
    }
    scraped
}

/// Clients of the warm-up's chats.
const WARM_UP_CLIENTS: usize = 8;

/// Warms up connections, caches (the gateways' credential cache too) and the lazy parts
/// (tokenizer, pools) before anything is measured.
async fn warm_up(
    options: &Options,
    client: &reqwest::Client,
    gateways: &Gateways<'_>,
    keys: &Callers,
    users: &Callers,
) {
    let warm = Duration::from_secs_f64(options.seconds_per_case.min(2.0));
    let all = Target::Chat(gateways.authenticated.to_vec());
    load::run(client, &all, keys, WARM_UP_CLIENTS, warm, None).await;
    let trust = Target::Chat(gateways.trust.to_vec());
    load::run(client, &trust, users, 1, warm / 2, None).await;
    let one = Target::Stream(gateways.authenticated[..1].to_vec());
    load::run(client, &one, keys, 4, warm / 2, None).await;
    // The limit cases' gateways: connections and credential caches, every key of theirs.
    let warm = Duration::from_secs_f64(options.seconds_per_case.min(2.0) / 2.0);
    let no_limiter = Target::Chat(gateways.no_limiter.to_vec());
    load::run(client, &no_limiter, keys, 1, warm, None).await;
    let no_retrieval = Target::Chat(gateways.no_retrieval.to_vec());
    load::run(client, &no_retrieval, keys, 1, warm, None).await;
    let overload = Target::Chat(gateways.overload.to_vec());
    let cap = overload_cap(options);
    load::run(client, &overload, keys, 4 * cap, warm, None).await;
}

#[cfg(test)]
mod tests {
    use super::is_named;

    #[test]
    fn a_case_is_named_alone_or_with_a_qualifier() {
        assert!(is_named("chat c=1", "chat c=1"));
        assert!(is_named("chat c=1 RETRIEVAL=off", "chat c=1"));
        assert!(!is_named("chat c=128", "chat c=1"));
        assert!(!is_named("v1 chat c=1", "chat c=1"));
    }
}

//! What the benchmark and the soak both start from: the local provider with its one
//! answer, the stack's backing and environment, a fresh admin key, and one user with an
//! API key per simulated client.

use std::io::Read as _;
use std::path::Path;

use chat_testing::accounts;
use chat_testing::stack::{Backing, Processes, Stack};
use chat_testing::{FakeOpenAi, FixedReply};
use futures::{StreamExt as _, TryStreamExt as _};

use crate::MODEL;

/// The provider's one answer.
const REPLY: &str =
    "Benchmarks measure what the gateway adds on top of the provider, nothing more.";

/// A local provider speaking OpenAI's wire format with zero added latency, so that what
/// is measured is the stack's own cost.
pub(crate) async fn start_provider() -> anyhow::Result<FakeOpenAi> {
    FakeOpenAi::start_fixed(&FixedReply {
        model: MODEL.to_owned(),
        text: REPLY.to_owned(),
        prompt_tokens: 24,
        completion_tokens: 13,
    })
    .await
}

/// The stack's Redis, MySQL and provider; `run` names this run's Redis keys
/// (`bench`, `soak`) so that runs can share a server.
pub(crate) fn backing(run: &str, redis_addr: &str, mysql_dsn: &str, provider_url: &str) -> Backing {
    Backing {
        redis_addr: redis_addr.to_owned(),
        redis_prefix: format!("{run}:{}:", std::process::id()),
        mysql_dsn: mysql_dsn.to_owned(),
        provider_url: provider_url.to_owned(),
        model: MODEL.to_owned(),
    }
}

/// Every service as its own process from `bin_dir`, on `backing`, with a gateway per
/// entry of `gateway_env`, each with that environment beside [`common_env`].
pub(crate) async fn start_stack(
    bin_dir: &Path,
    backing: &Backing,
    gateway_env: &[Vec<(String, String)>],
) -> anyhow::Result<Stack> {
    let processes = Processes {
        bin_dir: bin_dir.to_path_buf(),
        gateways: gateway_env.len(),
        env: common_env(),
    };
    Stack::processes_with_gateway_env(backing, &processes, gateway_env).await
}

/// The environment of every process: quotas no run reaches, and a rate limiter that runs
/// on every request but never refuses one.
pub(crate) fn common_env() -> Vec<(String, String)> {
    owned(&[
        // Trust mode's users have no limit of their own; this one keeps them in quota.
        ("DAILY_LIMIT", &accounts::DAILY_LIMIT.to_string()),
        ("RATE_LIMIT_PER_MINUTE", "1000000000"),
    ])
}

/// A gateway as deployed: authentication required, the admin API open to `admin_key`.
pub(crate) fn authenticated_env(admin_key: &str) -> Vec<(String, String)> {
    owned(&[("AUTH_MODE", "required"), ("ADMIN_API_KEY", admin_key)])
}

/// `pairs` as owned strings, as the launcher takes them.
pub(crate) fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

/// A fresh secret for the admin API of this run only.
pub(crate) fn random_admin_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// One user per simulated client, each with a daily limit no run reaches and an API key,
/// made through the admin API of `gateway`: each client's user id and key, in client
/// order.
pub(crate) async fn make_users(
    client: &reqwest::Client,
    gateway: &str,
    admin_key: &str,
    count: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let run = std::process::id();
    futures::stream::iter(0..count)
        .map(|index| async move {
            let user_id = format!("bench-{run}-{index}");
            let key = accounts::make_user(client, gateway, admin_key, &user_id, "bench").await?;
            Ok::<_, anyhow::Error>((user_id, key))
        })
        .buffered(8)
        .try_collect()
        .await
}

/// The HTTP client of the simulated callers: many connections, no Nagle delay.
pub(crate) fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()?)
}

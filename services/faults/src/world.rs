//! What `make faults` starts once, before the first fault: its own Redis and MariaDB,
//! the provider behind a relay, the stack as processes configured as deployed, and the
//! users of the load.

use chat_testing::stack::{Backing, Processes, Stack};
use chat_testing::{FakeOpenAi, OwnMariadb, OwnRedis};

use crate::checks::Quota;
use crate::client::Caller;
use crate::{MODEL, Options, World, progress, provider_behaviour, relay, users};

/// The prefix of every Redis key of the run.
const PREFIX: &str = "faults:";

/// Starts everything the faults are done to, and makes the users of the load.
pub(crate) async fn start(options: &Options) -> anyhow::Result<World> {
    std::fs::create_dir_all(&options.work_dir)?;
    clear_logs()?;
    let redis = OwnRedis::start_persistent().await?;
    let mariadb = OwnMariadb::start(&options.work_dir).await?;
    let (provider, relay) = start_provider().await?;
    let admin_key = users::random_admin_key();
    let backing = Backing {
        redis_addr: redis.addr(),
        redis_prefix: PREFIX.to_owned(),
        mysql_dsn: mariadb.url("chatdb"),
        provider_url: format!("http://127.0.0.1:{}/v1", relay.port),
        model: MODEL.to_owned(),
    };
    let processes = Processes {
        bin_dir: options.bin_dir.clone(),
        gateways: 1,
        env: stack_env(&admin_key),
    };
    progress("starting the stack");
    let stack = Stack::processes(&backing, &processes).await?;
    // No pooled connections: after a gateway restart a pooled one would be dead, and its
    // error the client's, not the gateway's.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .tcp_nodelay(true)
        .build()?;
    let (callers, probe) = make_callers(&http, stack.gateway(), &admin_key, options.users).await?;
    let quota = Quota::new(&backing.redis_addr, PREFIX)?;
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

/// The launcher appends each process's log to `CHAT_STACK_LOG_DIR`: starts this run's
/// afresh.
fn clear_logs() -> anyhow::Result<()> {
    if let Some(logs) = std::env::var_os("CHAT_STACK_LOG_DIR") {
        for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|ext| ext == "log") {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(())
}

/// The provider, answering as it does when nothing fails, and the relay the llm
/// service reaches it through.
async fn start_provider() -> anyhow::Result<(FakeOpenAi, relay::Relay)> {
    let provider = FakeOpenAi::start().await?;
    provider.always(provider_behaviour());
    let provider_addr = reqwest::Url::parse(&provider.base_url)?
        .socket_addrs(|| None)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no address in {}", provider.base_url))?;
    let relay = relay::Relay::start(provider_addr).await?;
    Ok((provider, relay))
}

/// The environment of every process: authentication as deployed, no rate limits, and
/// reservations that expire within the run.
fn stack_env(admin_key: &str) -> Vec<(String, String)> {
    [
        ("AUTH_MODE", "required"),
        ("ADMIN_API_KEY", admin_key),
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
    .collect()
}

/// The `users` users of the load, and the probe's own.
async fn make_callers(
    http: &reqwest::Client,
    gateway: &str,
    admin_key: &str,
    users: usize,
) -> anyhow::Result<(Vec<Caller>, Caller)> {
    let mut callers = Vec::new();
    for index in 0..users {
        let user_id = format!("faults-u{index}");
        callers.push(users::make_user(http, gateway, admin_key, &user_id).await?);
    }
    let probe = users::make_user(http, gateway, admin_key, "faults-probe").await?;
    Ok((callers, probe))
}

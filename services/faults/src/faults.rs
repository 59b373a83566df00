//! The faults, each done to a healthy, loaded stack: what is broken, for how long, and
//! how it comes back (by itself, or restarted as an orchestrator would).

use std::time::{Duration, Instant};

use chat_testing::Upstream;
use chat_testing::signal::Signal;

use crate::World;

/// How long MySQL stays frozen.
const MYSQL_PAUSE: Duration = Duration::from_secs(10);
/// How long a killed MySQL or Redis stays down before it is started again.
const DOWNTIME: Duration = Duration::from_secs(3);
/// How long the provider answers 500, then how long it refuses connections.
const PROVIDER_FAILING: Duration = Duration::from_secs(2);
/// How long a gateway sent SIGTERM may take to drain and exit before it is killed.
pub const GATEWAY_EXIT_WITHIN: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    MysqlPaused,
    MysqlKilled,
    RedisRestarted,
    LlmKilled,
    ProviderFailing,
    GatewayTerm,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::MysqlPaused,
        Fault::MysqlKilled,
        Fault::RedisRestarted,
        Fault::LlmKilled,
        Fault::ProviderFailing,
        Fault::GatewayTerm,
    ];

    /// Short name, for `--only` and the texts of the chats.
    pub fn slug(self) -> &'static str {
        match self {
            Self::MysqlPaused => "mysql-paused",
            Self::MysqlKilled => "mysql-killed",
            Self::RedisRestarted => "redis-restarted",
            Self::LlmKilled => "llm-killed",
            Self::ProviderFailing => "provider-failing",
            Self::GatewayTerm => "gateway-sigterm",
        }
    }

    /// What the table calls it.
    pub fn title(self) -> &'static str {
        match self {
            Self::MysqlPaused => "MySQL paused 10 s (SIGSTOP)",
            Self::MysqlKilled => "MySQL killed, restarted after 3 s",
            Self::RedisRestarted => "Redis killed, restarted after 3 s",
            Self::LlmKilled => "llm killed mid-stream, restarted",
            Self::ProviderFailing => "provider: 500 for 2 s, then refused for 2 s",
            Self::GatewayTerm => "gateway SIGTERM mid-stream, restarted",
        }
    }

    /// Breaks the stack, then lets it (or makes it) come back; the instant the fault
    /// ended (resumed, restarted, answering again), from which recovery is timed.
    pub async fn inject(self, world: &mut World) -> anyhow::Result<Instant> {
        match self {
            Self::MysqlPaused => {
                world.mariadb.pause().await?;
                tokio::time::sleep(MYSQL_PAUSE).await;
                world.mariadb.resume().await?;
            }
            Self::MysqlKilled => {
                world.mariadb.kill().await?;
                tokio::time::sleep(DOWNTIME).await;
                world.mariadb.restart().await?;
            }
            Self::RedisRestarted => {
                world.redis.stop().await?;
                tokio::time::sleep(DOWNTIME).await;
                world.redis.resume().await?;
            }
            Self::LlmKilled => {
                world.stack.signal("llm", Signal::Kill).await?;
                world
                    .stack
                    .wait_for_exit("llm", Duration::from_secs(5))
                    .await?;
                world.stack.restart("llm").await?;
            }
            Self::ProviderFailing => {
                world.provider.always(Upstream::ServerError);
                tokio::time::sleep(PROVIDER_FAILING).await;
                world.relay.refuse();
                world.provider.always(crate::provider_behaviour());
                tokio::time::sleep(PROVIDER_FAILING).await;
                world.relay.accept().await?;
            }
            Self::GatewayTerm => {
                world.stack.signal("gateway-1", Signal::Term).await?;
                let signalled = Instant::now();
                let exited = world
                    .stack
                    .wait_for_exit("gateway-1", GATEWAY_EXIT_WITHIN)
                    .await?;
                world.gateway_exit = Some(match exited {
                    Some(status) => format!(
                        "exited ({status}) {:.1} s after SIGTERM",
                        signalled.elapsed().as_secs_f64()
                    ),
                    None => format!("still running {GATEWAY_EXIT_WITHIN:?} after SIGTERM; killed"),
                });
                world.stack.restart("gateway-1").await?;
            }
        }
        Ok(Instant::now())
    }
}

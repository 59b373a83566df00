//! The one launcher of the whole stack: the six services on ports of their own, wired
//! to each other and to a Redis prefix, a MySQL database and a provider they are given.
//! Two modes, one [`Stack`]:
//!
//! - [`Stack::in_process`] (feature `in-process`): every service a task of the caller's
//!   runtime, its settings typed and adjustable. The gateway's system tests.
//! - [`Stack::processes`]: every service its own process, started from a directory of
//!   binaries and configured through the environment, as deployed; the CPU time and
//!   memory of each process readable. The telemetry test (debug binaries) and the
//!   benchmark (release binaries).
//!
//! In both modes the gateway trusts the user id a request names (`AUTH_MODE=none`), as
//! the original did and as the chat and telemetry tests expect; a caller that tests
//! authentication turns it on (`settings.gateway.auth_mode`, or per gateway in
//! processes mode, as the benchmark does with a key per simulated user).

mod control;
#[cfg(feature = "in-process")]
mod in_process;
mod processes;

use std::time::{Duration, Instant};

#[cfg(feature = "in-process")]
pub use in_process::Settings;
pub use processes::Processes;

use crate::{FakeOpenAi, TestDatabase, TestRedis};

/// Given to the llm service as `OPENAI_API_KEY`; the fakes only check that there is one.
pub const API_KEY: &str = "sk-test-0123456789abcdef";

/// The services behind the gateway, in the order they start (the gateway comes last).
const BACKENDS: [&str; 5] = ["filter", "token", "llm", "history", "keyword"];

/// How long the stack may take to answer (history migrates its schema first).
const READY_WITHIN: Duration = Duration::from_secs(30);

/// What the stack runs against, whatever the mode.
#[derive(Debug, Clone)]
pub struct Backing {
    pub redis_addr: String,
    /// Every Redis key of the stack starts with it, so stacks can share a server.
    pub redis_prefix: String,
    pub mysql_dsn: String,
    /// `OPENAI_BASE_URL` of the llm service, ending in `/v1`.
    pub provider_url: String,
    pub model: String,
}

impl Backing {
    /// A test's own Redis prefix, database and fake provider, with the model `gpt-test`.
    pub fn of(redis: &TestRedis, database: &TestDatabase, provider: &FakeOpenAi) -> Self {
        Self {
            redis_addr: redis.addr.clone(),
            redis_prefix: redis.prefix.clone(),
            mysql_dsn: database.url.clone(),
            provider_url: provider.base_url.clone(),
            model: "gpt-test".to_owned(),
        }
    }
}

/// A running stack. Its services stop when it is dropped.
pub struct Stack {
    /// Base URLs of the gateways, `http://127.0.0.1:PORT`.
    pub gateways: Vec<String>,
    /// Each process's name and `/metrics` URL (the in-process stack serves no metrics).
    pub metrics: Vec<(String, String)>,
    /// Where the services behind the gateways listen, for their health checks.
    backends: Vec<String>,
    running: Running,
}

enum Running {
    /// By service name; aborted when dropped.
    #[cfg_attr(not(feature = "in-process"), allow(dead_code))]
    Tasks(Vec<(&'static str, tokio::task::JoinHandle<()>)>),
    /// By name (`filter`, ..., `gateway-1`); killed when dropped (`kill_on_drop`).
    Processes(Vec<processes::Process>),
}

impl Stack {
    /// Base URL of the first gateway.
    pub fn gateway(&self) -> &str {
        self.gateways
            .first()
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Until every service says it is healthy, backends first (history only serves
    /// once it has migrated its schema), whatever the gateway asks of its callers. A
    /// service that stops meanwhile fails it at once.
    async fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        let probes = self.backends.iter().map(|addr| (addr.clone(), false));
        let probes: Vec<(String, bool)> = probes
            .chain(self.gateways.iter().map(|url| (url.clone(), true)))
            .collect();
        for (addr, http) in probes {
            loop {
                if healthy(&addr, http).await {
                    break;
                }
                self.ensure_running()?;
                anyhow::ensure!(Instant::now() < deadline, "{addr} did not become ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        match &mut self.running {
            Running::Tasks(tasks) => {
                if let Some((name, _)) = tasks.iter().find(|(_, task)| task.is_finished()) {
                    anyhow::bail!("{name} stopped before the stack was ready (see its log)");
                }
            }
            Running::Processes(children) => {
                for process in children {
                    if let Some(status) = process.child.try_wait()? {
                        return Err(ExitedEarly {
                            name: process.name.clone(),
                            status,
                        }
                        .into());
                    }
                }
            }
        }
        Ok(())
    }
}

/// A process of the stack exited before every service was ready: most often a port it
/// was given was taken meanwhile.
#[derive(Debug)]
struct ExitedEarly {
    name: String,
    status: std::process::ExitStatus,
}

impl std::fmt::Display for ExitedEarly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { name, status } = self;
        write!(f, "{name} exited ({status}) before the stack was ready")
    }
}

impl std::error::Error for ExitedEarly {}

/// Whether the service at `addr` answers its health check: `GET /health` if `http`,
/// the gRPC health service otherwise.
async fn healthy(addr: &str, http: bool) -> bool {
    if http {
        chat_common::healthcheck::http(addr, "/health")
            .await
            .is_ok()
    } else {
        chat_common::healthcheck::grpc(addr).await.is_ok()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Running::Tasks(tasks) = &self.running {
            for (_, task) in tasks {
                task.abort();
            }
        }
    }
}

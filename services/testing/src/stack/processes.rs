//! Every service its own process, from the `chat-*` binaries of one directory, with the
//! CPU time and peak memory of each read from /proc.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::{API_KEY, BACKENDS, Backing, Running, Stack};

/// How to start the stack as processes.
#[derive(Debug, Clone)]
pub struct Processes {
    /// Where the `chat-*` binaries are: `target/debug` or `target/release`.
    pub bin_dir: PathBuf,
    /// How many gateway processes, each on its own port, in front of the one set of
    /// services.
    pub gateways: usize,
    /// Environment of every process, over what the launcher sets (`OTEL_*`, limits,
    /// deadlines).
    pub env: Vec<(String, String)>,
}

/// A port free now, for a process to bind later: the services take an address to bind,
/// not a socket.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn binary(dir: &Path, service: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("chat-{service}"));
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build the services first (`cargo build --workspace --bins`, or \
         `--release` for the benchmark)",
        path.display()
    );
    Ok(path)
}

impl Stack {
    /// Starts the services, then `options.gateways` gateways, and waits until every
    /// process says it is healthy. The processes are killed when the stack is dropped.
    pub async fn processes(backing: &Backing, options: &Processes) -> anyhow::Result<Self> {
        Self::processes_with_gateway_env(backing, options, &[]).await
    }

    /// As [`Stack::processes`], with `gateway_env[i]` added over [`Processes::env`] for
    /// gateway `i + 1` only: gateways that differ in one setting (the benchmark's
    /// `AUTH_MODE`) behind the same services, so comparing them measures that setting.
    pub async fn processes_with_gateway_env(
        backing: &Backing,
        options: &Processes,
        gateway_env: &[Vec<(String, String)>],
    ) -> anyhow::Result<Self> {
        let mut ports = BTreeMap::new();
        for service in BACKENDS {
            ports.insert(service, free_port()?);
        }
        let wiring: Vec<(String, String)> = BACKENDS
            .iter()
            .map(|service| {
                let addr = format!("http://127.0.0.1:{}", ports[service]);
                (format!("{}_ADDR", service.to_uppercase()), addr)
            })
            .collect();
        let wiring_addrs = wiring.iter().map(|(_, addr)| addr.clone()).collect();
        let mut launch = Launch {
            backing,
            options,
            wiring,
            children: Vec::new(),
            metrics: Vec::new(),
        };
        for service in BACKENDS {
            launch.spawn(service.to_owned(), service, ports[service], &[])?;
        }
        let mut gateways = Vec::new();
        for index in 1..=options.gateways {
            let port = free_port()?;
            let own_env = gateway_env.get(index - 1).map_or(&[][..], Vec::as_slice);
            launch.spawn(format!("gateway-{index}"), "gateway", port, own_env)?;
            gateways.push(format!("http://127.0.0.1:{port}"));
        }
        let mut stack = Self {
            gateways,
            metrics: launch.metrics,
            backends: wiring_addrs,
            running: Running::Processes(launch.children),
        };
        stack.wait_until_ready().await?;
        Ok(stack)
    }

    /// CPU seconds (user + system) each process has used so far.
    pub fn cpu_seconds(&self) -> BTreeMap<String, f64> {
        self.each_process(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name, which is in parentheses and may hold spaces.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: f64 =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
    }

    /// Peak resident memory of each process, in MiB.
    pub fn peak_rss_mib(&self) -> BTreeMap<String, f64> {
        self.each_process(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        })
    }

    /// `read` of every process by name; nothing for an in-process stack.
    fn each_process(&self, read: impl Fn(u32) -> Option<f64>) -> BTreeMap<String, f64> {
        let Running::Processes(children) = &self.running else {
            return BTreeMap::new();
        };
        children
            .iter()
            .filter_map(|(name, child)| Some((name.clone(), read(child.id()?)?)))
            .collect()
    }
}

/// The processes started so far, and what every one of them is given.
struct Launch<'a> {
    backing: &'a Backing,
    options: &'a Processes,
    /// `FILTER_ADDR`, ...: where each service listens.
    wiring: Vec<(String, String)>,
    children: Vec<(String, Child)>,
    metrics: Vec<(String, String)>,
}

impl Launch<'_> {
    fn spawn(
        &mut self,
        name: String,
        service: &str,
        port: u16,
        own_env: &[(String, String)],
    ) -> anyhow::Result<()> {
        let upper = service.to_uppercase();
        let metrics_port = free_port()?;
        let backing = self.backing;
        let child = Command::new(binary(&self.options.bin_dir, service)?)
            .env_remove("CHAT_CONFIG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env(format!("{upper}_LISTEN"), format!("127.0.0.1:{port}"))
            .env(
                format!("{upper}_METRICS_LISTEN"),
                format!("127.0.0.1:{metrics_port}"),
            )
            .env("REDIS_ADDR", &backing.redis_addr)
            .env("REDIS_KEY_PREFIX", &backing.redis_prefix)
            .env("MYSQL_DSN", &backing.mysql_dsn)
            .env("OPENAI_API_KEY", API_KEY)
            .env("OPENAI_BASE_URL", &backing.provider_url)
            .env("OPENAI_MODEL", &backing.model)
            .env("AUTH_MODE", "none")
            .envs(self.wiring.iter().cloned())
            .envs(self.options.env.iter().cloned())
            .envs(own_env.iter().cloned())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        self.children.push((name.clone(), child));
        self.metrics
            .push((name, format!("http://127.0.0.1:{metrics_port}/metrics")));
        Ok(())
    }
}

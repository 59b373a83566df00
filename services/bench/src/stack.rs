//! The stack under test: every service as its own release process, as deployed, with
//! the CPU time and peak memory of each read from /proc.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct StackConfig {
    /// Where the `chat-*` binaries are.
    pub bin_dir: PathBuf,
    pub upstream: String,
    pub gateways: usize,
    pub redis_addr: String,
    pub redis_prefix: String,
    pub mysql_dsn: String,
}

pub struct Stack {
    /// Base URLs of the gateways.
    pub gateways: Vec<String>,
    processes: Vec<(String, Child)>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn binary(dir: &Path, service: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("chat-{service}"));
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build the services first",
        path.display()
    );
    Ok(path)
}

impl Stack {
    pub async fn start(config: &StackConfig) -> anyhow::Result<Self> {
        let mut ports = BTreeMap::new();
        for service in ["filter", "token", "llm", "history"] {
            ports.insert(service, free_port()?);
        }
        let address = |service: &str| format!("http://127.0.0.1:{}", ports[service]);
        let mut processes = Vec::new();
        let mut spawn =
            |name: String, service: &str, extra: Vec<(String, String)>| -> anyhow::Result<()> {
                let mut command = Command::new(binary(&config.bin_dir, service)?);
                command
                    .env_remove("CHAT_CONFIG")
                    .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .env("REDIS_ADDR", &config.redis_addr)
                    .env("REDIS_KEY_PREFIX", &config.redis_prefix)
                    .env("MYSQL_DSN", &config.mysql_dsn)
                    .env("OPENAI_API_KEY", "sk-bench")
                    .env("OPENAI_BASE_URL", &config.upstream)
                    .env("OPENAI_MODEL", crate::upstream::MODEL)
                    .env("DAILY_LIMIT", "1000000000000")
                    // The limiter runs on every request but never refuses one.
                    .env("RATE_LIMIT_PER_MINUTE", "1000000000")
                    .env("FILTER_ADDR", address("filter"))
                    .env("TOKEN_ADDR", address("token"))
                    .env("LLM_ADDR", address("llm"))
                    .env("HISTORY_ADDR", address("history"))
                    .envs(extra)
                    .stdout(Stdio::null())
                    .kill_on_drop(true);
                processes.push((name, command.spawn()?));
                Ok(())
            };
        for service in ["filter", "token", "llm", "history"] {
            let upper = service.to_uppercase();
            spawn(
                service.to_owned(),
                service,
                vec![
                    (
                        format!("{upper}_LISTEN"),
                        format!("127.0.0.1:{}", ports[service]),
                    ),
                    (
                        format!("{upper}_METRICS_LISTEN"),
                        format!("127.0.0.1:{}", free_port()?),
                    ),
                ],
            )?;
        }
        let mut gateways = Vec::new();
        for index in 0..config.gateways {
            let port = free_port()?;
            spawn(
                format!("gateway-{}", index + 1),
                "gateway",
                vec![
                    ("GATEWAY_LISTEN".to_owned(), format!("127.0.0.1:{port}")),
                    (
                        "GATEWAY_METRICS_LISTEN".to_owned(),
                        format!("127.0.0.1:{}", free_port()?),
                    ),
                ],
            )?;
            gateways.push(format!("http://127.0.0.1:{port}"));
        }
        let stack = Self {
            gateways,
            processes,
        };
        stack.wait_until_ready().await?;
        Ok(stack)
    }

    async fn wait_until_ready(&self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        for gateway in &self.gateways {
            let mut ready = false;
            for _ in 0..300 {
                let answer = client
                    .get(format!("{gateway}/history?user_id=bench-warmup"))
                    .send()
                    .await;
                if answer.is_ok_and(|answer| answer.status().is_success()) {
                    ready = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::ensure!(ready, "{gateway} did not become ready");
        }
        Ok(())
    }

    /// CPU seconds (user + system) each process has used so far.
    pub fn cpu_seconds(&self) -> BTreeMap<String, f64> {
        self.each(|pid| {
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
        self.each(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        })
    }

    fn each(&self, read: impl Fn(u32) -> Option<f64>) -> BTreeMap<String, f64> {
        self.processes
            .iter()
            .filter_map(|(name, child)| Some((name.clone(), read(child.id()?)?)))
            .collect()
    }
}

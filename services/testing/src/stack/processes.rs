//! Every service its own process, from the `chat-*` binaries of one directory, with the
//! CPU time and peak memory of each read from /proc.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::{API_KEY, BACKENDS, Backing, Running, Stack};
use crate::free_port;

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
        // A port handed out by `free_port` can still be taken before the service binds
        // it; the service then exits, and the whole stack starts again on other ports.
        let mut attempts = 1;
        loop {
            match Self::start_processes(backing, options, gateway_env).await {
                Err(error) if error.is::<super::ExitedEarly>() && attempts < 3 => {
                    tracing::warn!(%error, "starting the stack again");
                    attempts += 1;
                }
                started => return started,
            }
        }
    }

    async fn start_processes(
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

    /// Peak resident memory of each process (`VmHWM`) since it started or since
    /// [`Stack::reset_peak_rss`], in MiB.
    pub fn peak_rss_mib(&self) -> BTreeMap<String, f64> {
        self.each_process(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        })
    }

    /// Starts every process's peak resident memory again from what it holds now (5 to
    /// `/proc/PID/clear_refs`), so that [`Stack::peak_rss_mib`] gives the peak of what ran
    /// since: the bench's load, not its set-up.
    pub fn reset_peak_rss(&self) -> std::io::Result<()> {
        let Running::Processes(children) = &self.running else {
            return Ok(());
        };
        for pid in children.iter().filter_map(|process| process.child.id()) {
            std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
        }
        Ok(())
    }

    /// Resident memory of each process now, in MiB.
    pub fn rss_mib(&self) -> BTreeMap<String, f64> {
        self.rss_kib()
            .into_iter()
            .map(|(process, kib)| (process, kib / 1024.0))
            .collect()
    }

    /// Resident memory of each process now (`VmRSS`), in KiB: the soak samples it to
    /// see whether memory keeps growing under load.
    pub fn rss_kib(&self) -> BTreeMap<String, f64> {
        self.each_process(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
    }

    /// `read` of every process by name; nothing for an in-process stack.
    fn each_process(&self, read: impl Fn(u32) -> Option<f64>) -> BTreeMap<String, f64> {
        let Running::Processes(children) = &self.running else {
            return BTreeMap::new();
        };
        children
            .iter()
            .filter_map(|process| Some((process.name.clone(), read(process.child.id()?)?)))
            .collect()
    }
}

/// One service process of the stack, and how to start it again.
pub(super) struct Process {
    /// `filter`, ..., `gateway-1`.
    pub(super) name: String,
    pub(super) child: Child,
    /// The binary, its whole environment and where it answers health checks, for
    /// [`Stack::restart`].
    pub(super) recipe: Recipe,
}

/// Everything needed to start one process again as it was first started.
#[derive(Debug, Clone)]
pub(super) struct Recipe {
    program: PathBuf,
    env: Vec<(String, String)>,
    /// `http://127.0.0.1:PORT`: gRPC health for a backend, `GET /health` for a gateway.
    pub(super) addr: String,
    pub(super) http: bool,
}

impl Recipe {
    /// Starts the process. Its stdout (the JSON log) is appended to
    /// `$CHAT_STACK_LOG_DIR/<name>.log` when that is set, else dropped.
    pub(super) fn start(&self, name: &str) -> anyhow::Result<Child> {
        let stdout = match std::env::var_os("CHAT_STACK_LOG_DIR") {
            Some(dir) => {
                std::fs::create_dir_all(&dir)?;
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(Path::new(&dir).join(format!("{name}.log")))?;
                Stdio::from(log)
            }
            None => Stdio::null(),
        };
        Ok(Command::new(&self.program)
            .env_remove("CHAT_CONFIG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(self.env.iter().cloned())
            .stdout(stdout)
            .kill_on_drop(true)
            .spawn()?)
    }
}

/// The processes started so far, and what every one of them is given.
struct Launch<'a> {
    backing: &'a Backing,
    options: &'a Processes,
    /// `FILTER_ADDR`, ...: where each service listens.
    wiring: Vec<(String, String)>,
    children: Vec<Process>,
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
        let mut env = vec![
            (format!("{upper}_LISTEN"), format!("127.0.0.1:{port}")),
            (
                format!("{upper}_METRICS_LISTEN"),
                format!("127.0.0.1:{metrics_port}"),
            ),
            ("REDIS_ADDR".to_owned(), backing.redis_addr.clone()),
            ("REDIS_KEY_PREFIX".to_owned(), backing.redis_prefix.clone()),
            ("MYSQL_DSN".to_owned(), backing.mysql_dsn.clone()),
            ("OPENAI_API_KEY".to_owned(), API_KEY.to_owned()),
            ("OPENAI_BASE_URL".to_owned(), backing.provider_url.clone()),
            ("OPENAI_MODEL".to_owned(), backing.model.clone()),
            ("AUTH_MODE".to_owned(), "none".to_owned()),
        ];
        env.extend(self.wiring.iter().cloned());
        env.extend(self.options.env.iter().cloned());
        env.extend(own_env.iter().cloned());
        let recipe = Recipe {
            program: binary(&self.options.bin_dir, service)?,
            env,
            addr: format!("http://127.0.0.1:{port}"),
            http: service == "gateway",
        };
        let child = recipe.start(&name)?;
        self.children.push(Process {
            name: name.clone(),
            child,
            recipe,
        });
        self.metrics
            .push((name, format!("http://127.0.0.1:{metrics_port}/metrics")));
        Ok(())
    }
}

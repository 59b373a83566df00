//! A MariaDB server of the caller's own, as a child process on a free port with its data
//! in a directory of its own: for the fault suite, which pauses, kills and restarts it
//! (never the shared test server).
//!
//! It runs with `--skip-grant-tables` (anyone on 127.0.0.1 is root, no password): it
//! listens on the loopback only and lives as long as the run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tokio::process::{Child, Command};

use crate::signal::{self, Signal};

/// How long a start, or a restart after a crash (InnoDB recovers first), may take.
const START_WITHIN: Duration = Duration::from_secs(60);
/// Tries at installing and at starting.
const START_ATTEMPTS: u32 = 3;

pub struct OwnMariadb {
    pub port: u16,
    /// Holds `data/`, the socket and `error.log`; removed when this is dropped.
    dir: PathBuf,
    /// The running server; `None` between a kill and a restart.
    server: Option<Child>,
}

impl OwnMariadb {
    /// Makes a fresh data directory in a new directory under `parent` (e.g. `target/...`),
    /// starts the server on a free port and waits until it answers, with a database
    /// `chatdb` made.
    pub async fn start(parent: &Path) -> anyhow::Result<Self> {
        let dir = parent.join(format!("mariadb-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let dir = dir.canonicalize()?;
        if let Err(error) = install(&dir).await {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(error);
        }
        let mut mariadb = Self {
            port: 0,
            dir,
            server: None,
        };
        // A free port can be taken by another test's server between our asking for it
        // and mariadbd binding it: then ours exits, and another port is tried.
        for attempt in 1..=START_ATTEMPTS {
            mariadb.port = crate::free_port()?;
            match mariadb.launch().await {
                Ok(()) => break,
                Err(error) if attempt < START_ATTEMPTS => {
                    tracing::warn!(%error, attempt, "mariadbd did not start; another port");
                    mariadb.kill().await?;
                }
                Err(error) => return Err(error),
            }
        }
        let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(&mariadb.url(""))?);
        let mut connection = pool.get_conn().await?;
        connection
            .query_drop(
                "CREATE DATABASE IF NOT EXISTS chatdb CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            )
            .await?;
        drop(connection);
        pool.disconnect().await?;
        Ok(mariadb)
    }

    /// `mysql://root@127.0.0.1:PORT/<database>`, for `MYSQL_DSN`.
    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().and_then(Child::id)
    }

    /// Freezes the server (`SIGSTOP`): connections stay open and nothing answers, as
    /// with a hung host.
    pub async fn pause(&self) -> anyhow::Result<()> {
        signal::send(self.running_pid()?, Signal::Stop).await
    }

    /// Lets a paused server go on (`SIGCONT`).
    pub async fn resume(&self) -> anyhow::Result<()> {
        signal::send(self.running_pid()?, Signal::Cont).await
    }

    /// Kills the server at once (`SIGKILL`), as a crash; its data and port stay.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut server) = self.server.take() {
            server.kill().await?;
        }
        Ok(())
    }

    /// Starts the server again on the same data and port (killing it first if it runs),
    /// and waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.launch().await
    }

    fn running_pid(&self) -> anyhow::Result<u32> {
        self.pid()
            .ok_or_else(|| anyhow::anyhow!("the MariaDB server is not running"))
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let dir = &self.dir;
        let server = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--user={}", user_name().await))
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--socket={}", dir.join("mariadbd.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .arg(format!("--port={}", self.port))
            .args(["--bind-address=127.0.0.1", "--skip-grant-tables"])
            .args(["--skip-name-resolve", "--skip-log-bin"])
            .args([
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
            ])
            // Durable commits, as in production: a kill must lose nothing committed.
            .args([
                "--innodb-flush-log-at-trx-commit=1",
                "--innodb-buffer-pool-size=64M",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| {
                anyhow::anyhow!("cannot start mariadbd ({error}); install mariadb-server")
            })?;
        self.server = Some(server);
        self.wait_until_it_answers().await
    }

    async fn wait_until_it_answers(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_WITHIN;
        let opts = mysql_async::Opts::from_url(&self.url(""))?;
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(2), async {
                let mut connection = mysql_async::Conn::new(opts.clone()).await?;
                let datadir: Option<String> = connection.query_first("SELECT @@datadir").await?;
                connection.disconnect().await?;
                Ok::<_, mysql_async::Error>(datadir)
            })
            .await;
            // Only our own server counts: another one answering on the port means ours
            // could not bind it (and is about to exit).
            if let Ok(Ok(Some(datadir))) = attempt
                && Path::new(datadir.trim_end_matches('/')) == self.dir.join("data")
            {
                return Ok(());
            }
            if let Some(server) = self.server.as_mut()
                && let Some(status) = server.try_wait()?
            {
                anyhow::bail!(
                    "mariadbd exited ({status}); see {}",
                    self.dir.join("error.log").display()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "mariadbd did not answer within {START_WITHIN:?}; see {}",
                self.dir.join("error.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for OwnMariadb {
    fn drop(&mut self) {
        if let Some(server) = self.server.as_mut() {
            // SIGKILL needs no SIGCONT: a paused server dies too, before its data goes.
            let _ = server.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes a fresh data directory in `dir`, trying again on a failure (seen once under
/// a full parallel test run), with what the tool said when it keeps failing.
async fn install(dir: &Path) -> anyhow::Result<()> {
    let data = dir.join("data");
    let mut said = String::new();
    for _ in 0..START_ATTEMPTS {
        let _ = std::fs::remove_dir_all(&data);
        let output = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--user={}", user_name().await))
            .args(["--skip-test-db", "--auth-root-authentication-method=normal"])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|error| {
                anyhow::anyhow!("cannot run mariadb-install-db ({error}); install mariadb-server")
            })?;
        if output.status.success() {
            return Ok(());
        }
        said = format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("mariadb-install-db failed {START_ATTEMPTS} times; last: {said}")
}

/// Who runs this (mariadbd refuses to run as root without `--user=root`).
async fn user_name() -> String {
    let named = Command::new("id").arg("-un").output().await;
    match named {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        }
        _ => std::env::var("USER").unwrap_or_else(|_| "root".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn another_server_on_the_port_is_not_taken_for_ours() -> anyhow::Result<()> {
        let parent = std::env::temp_dir();
        let first = OwnMariadb::start(&parent).await?;
        let dir = parent.join(format!("mariadb-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        install(&dir).await?;
        // As when another test's server bound the port between our asking and binding.
        let mut second = OwnMariadb {
            port: first.port,
            dir: dir.canonicalize()?,
            server: None,
        };
        let launched = second.launch().await;
        assert!(
            launched.is_err(),
            "the first server was taken for the second"
        );
        Ok(())
    }
}

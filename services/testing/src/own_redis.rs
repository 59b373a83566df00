//! A Redis server of the test's own, as a child process on a free port: for tests that
//! stop Redis and start it again (never the shared one), or that need it in cluster mode.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

pub struct OwnRedis {
    pub port: u16,
    cluster: bool,
    /// Every write in an append-only file, synced before it is answered, as a deployed
    /// Redis keeps its data (compose runs it with `--appendonly yes`): a kill loses nothing.
    persistent: bool,
    dir: PathBuf,
    server: Option<Child>,
}

impl OwnRedis {
    /// A plain server, no persistence: a restart starts empty.
    pub async fn start() -> anyhow::Result<Self> {
        Self::launch(false, false).await
    }

    /// A server that keeps every acknowledged write across a kill and a start
    /// ([`stop`](Self::stop), [`resume`](Self::resume)): `appendfsync always`.
    pub async fn start_persistent() -> anyhow::Result<Self> {
        Self::launch(false, true).await
    }

    /// A one-node Redis Cluster owning every slot: a script that declares keys of two
    /// slots fails there with `CROSSSLOT`, as on any cluster.
    pub async fn start_cluster() -> anyhow::Result<Self> {
        let redis = Self::launch(true, false).await?;
        let pool = chat_common::redis::pool(&redis.addr(), 1, Duration::from_secs(2))?;
        let mut connection = pool.get().await?;
        let _: String = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .query_async(&mut connection)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut connection)
                .await?;
            if info.contains("cluster_state:ok") {
                return Ok(redis);
            }
            anyhow::ensure!(Instant::now() < deadline, "the cluster did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn launch(cluster: bool, persistent: bool) -> anyhow::Result<Self> {
        let port = crate::free_port()?;
        let dir = std::env::temp_dir().join(format!("own-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let mut redis = Self {
            port,
            cluster,
            persistent,
            dir,
            server: None,
        };
        redis.resume().await?;
        Ok(redis)
    }

    pub fn addr(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir);
        if self.persistent {
            command.args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ]);
        } else {
            command.args(["--save", "", "--appendonly", "no"]);
        }
        if self.cluster {
            // The cluster bus listens on a port of its own: by default this one plus
            // 10,000, which nothing checked was free (or below 65,536).
            let bus = crate::free_port()?.to_string();
            command.args(["--cluster-enabled", "yes", "--cluster-port", &bus]);
        }
        let server = command
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| anyhow::anyhow!("cannot start redis-server ({error})"))?;
        self.server = Some(server);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Kills the server; its port stays this one's.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut server) = self.server.take() {
            server.kill().await?;
        }
        Ok(())
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

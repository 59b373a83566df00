//! One named process of a [`Stack::processes`] stack signalled, awaited or started again:
//! what the fault suite and the shutdown tests do to a running stack. Names are those of
//! the launcher: `filter`, `token`, `llm`, `history`, `keyword`, `gateway-1`, ...

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::processes::Process;
use super::{READY_WITHIN, Running, Stack, healthy};
use crate::signal::{self, Signal};

impl Stack {
    /// The process id of `name` while it runs (`None` for an unknown name, a process
    /// that exited, or an in-process stack).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.process(name).ok()?.child.id()
    }

    /// Sends `signal` to `name`.
    pub async fn signal(&self, name: &str, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid(name)
            .ok_or_else(|| anyhow::anyhow!("{name} is not running"))?;
        signal::send(pid, signal).await
    }

    /// Waits up to `within` for `name` to exit: its status, or `None` if it still runs.
    pub async fn wait_for_exit(
        &mut self,
        name: &str,
        within: Duration,
    ) -> anyhow::Result<Option<ExitStatus>> {
        let child = &mut self.process_mut(name)?.child;
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => Ok(Some(status?)),
            Err(_) => Ok(None),
        }
    }

    /// Starts `name` again as it was first started (same port, same environment),
    /// killing it first if it still runs, and waits until it answers its health check.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let process = self.process_mut(name)?;
        if process.child.try_wait()?.is_none() {
            process.child.kill().await?;
        }
        process.child = process.recipe.start(name)?;
        let (addr, http) = (process.recipe.addr.clone(), process.recipe.http);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if healthy(&addr, http).await {
                return Ok(());
            }
            if let Some(status) = self.process_mut(name)?.child.try_wait()? {
                anyhow::bail!("{name} exited ({status}) after its restart");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name} did not answer within {READY_WITHIN:?} of its restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn process(&self, name: &str) -> anyhow::Result<&Process> {
        let Running::Processes(children) = &self.running else {
            anyhow::bail!("an in-process stack has no processes");
        };
        children
            .iter()
            .find(|process| process.name == name)
            .ok_or_else(|| anyhow::anyhow!("no process named {name}"))
    }

    fn process_mut(&mut self, name: &str) -> anyhow::Result<&mut Process> {
        let Running::Processes(children) = &mut self.running else {
            anyhow::bail!("an in-process stack has no processes");
        };
        children
            .iter_mut()
            .find(|process| process.name == name)
            .ok_or_else(|| anyhow::anyhow!("no process named {name}"))
    }
}

//! Signals to processes of the stack and of the fixtures, through `kill(1)`: the
//! workspace forbids `unsafe`, which `libc::kill` needs.

use tokio::process::Command;

/// The signals the fault suite sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ask to stop (graceful shutdown).
    Term,
    /// Die at once.
    Kill,
    /// Freeze.
    Stop,
    /// Go on after a [`Signal::Stop`].
    Cont,
}

impl Signal {
    /// The name `kill -s` takes.
    fn name(self) -> &'static str {
        match self {
            Self::Term => "TERM",
            Self::Kill => "KILL",
            Self::Stop => "STOP",
            Self::Cont => "CONT",
        }
    }
}

/// Sends `signal` to the process `pid`.
pub async fn send(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-s", signal.name(), &pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(
        status.success(),
        "kill -s {} {pid}: {status}",
        signal.name()
    );
    Ok(())
}

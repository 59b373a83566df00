//! The settlement journal: settlements Redis could not take, written durably to a file
//! (`SETTLEMENT_JOURNAL_DIR`) and replayed once Redis answers again.
//!
//! Without it, a settlement during a Redis outage fails, the reservation expires and the
//! sweeper refunds it: the chat goes free. With it, the settlement is appended to
//! `settlements.log` as a line of JSON and `fsync`ed before the caller hears it was
//! taken; [`Quota`](crate::Quota)'s replayer later renames the log to `replaying.log`
//! (new settlements go to a fresh log meanwhile), applies every line, and removes the
//! file once all of them are in Redis. A replay cut short starts that file again from its
//! first line next time, which is harmless: settling is idempotent by reservation id,
//! and a reservation the sweeper refunded meanwhile is charged once, from its tombstone.
//!
//! A line cut short by a crash mid-write is skipped with an error log; it was never
//! acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// One settlement, as the caller sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    pub user_id: String,
    pub reservation_id: String,
    pub actual_tokens: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_prompt_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_prompt_tokens: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("settlement journal: {0}")]
    Io(#[from] std::io::Error),
    #[error("settlement journal: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("settlement journal: the writer task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The journal's directory; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Files>,
}

struct Files {
    /// Where new settlements are appended.
    log: PathBuf,
    /// The batch being replayed.
    replaying: PathBuf,
    dir: PathBuf,
    /// Appends and the rotation of `log` into `replaying` take turns.
    lock: Mutex<()>,
}

impl Journal {
    /// The journal in `dir`, created when missing.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            inner: Arc::new(Files {
                log: dir.join("settlements.log"),
                replaying: dir.join("replaying.log"),
                dir: dir.to_owned(),
                lock: Mutex::new(()),
            }),
        })
    }

    /// Appends `settlement` and waits until it is on disk.
    pub async fn append(&self, settlement: &Settlement) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(settlement)?;
        line.push(b'\n');
        let files = self.inner.clone();
        tokio::task::spawn_blocking(move || files.append(&line)).await??;
        Ok(())
    }

    /// The settlements to replay, oldest batch first: the batch a previous replay left,
    /// else the log so far (moved aside). `None` when there is nothing to replay.
    pub async fn batch(&self) -> Result<Option<Vec<Settlement>>, JournalError> {
        let files = self.inner.clone();
        Ok(tokio::task::spawn_blocking(move || files.batch()).await??)
    }

    /// The batch [`batch`](Self::batch) answered is all in Redis: forget it.
    pub async fn replayed(&self) -> Result<(), JournalError> {
        let files = self.inner.clone();
        tokio::task::spawn_blocking(move || files.replayed()).await??;
        Ok(())
    }
}

impl Files {
    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let _turn = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let created = !self.log.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.log)?;
        // After a line torn by a crash, start on a line of its own: the torn one is
        // skipped on replay, this one must not be.
        let length = file.metadata()?.len();
        let mut last = [b'\n'];
        if length > 0 {
            file.read_exact_at(&mut last, length - 1)?;
        }
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
        file.write_all(line)?;
        file.sync_data()?;
        if created {
            // The new file's name must survive a crash too.
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn batch(&self) -> std::io::Result<Option<Vec<Settlement>>> {
        if !self.replaying.exists() {
            let _turn = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            match std::fs::rename(&self.log, &self.replaying) {
                Ok(()) => sync_dir(&self.dir)?,
                Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
                Err(error) => return Err(error),
            }
        }
        let reader = BufReader::new(File::open(&self.replaying)?);
        let mut settlements = Vec::new();
        for line in reader.lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(&line) {
                Ok(settlement) => settlements.push(settlement),
                Err(error) => {
                    tracing::error!(%error, line, "skipping an unreadable line of the settlement journal");
                }
            }
        }
        Ok(Some(settlements))
    }

    fn replayed(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.replaying) {
            Ok(()) => sync_dir(&self.dir),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// Makes a directory's entries (a created, renamed or removed file) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settlement(id: &str, actual: i64) -> Settlement {
        Settlement {
            user_id: "u1".to_owned(),
            reservation_id: id.to_owned(),
            actual_tokens: actual,
            reported_prompt_tokens: None,
            sent_prompt_tokens: None,
        }
    }

    #[tokio::test]
    async fn settlements_come_back_in_order_until_replayed() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let journal = Journal::open(&dir)?;
        assert_eq!(journal.batch().await?, None, "nothing journalled");
        journal.append(&settlement("a", 10)).await?;
        journal.append(&settlement("b", 20)).await?;
        let first = journal.batch().await?;
        assert_eq!(first, Some(vec![settlement("a", 10), settlement("b", 20)]));
        // Appended during the replay: the next batch, not this one.
        journal.append(&settlement("c", 30)).await?;
        // A replay cut short gets the same batch again.
        assert_eq!(journal.batch().await?, first);
        journal.replayed().await?;
        // A torn last line (a crash mid-write) is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("settlements.log"))?
            .write_all(b"{\"user_id\":\"u1\",\"reserv")?;
        journal.append(&settlement("d", 40)).await?;
        assert_eq!(
            journal.batch().await?,
            Some(vec![settlement("c", 30), settlement("d", 40)])
        );
        journal.replayed().await?;
        assert_eq!(journal.batch().await?, None);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}

//! The save path: a save finds its conversation and goes to MySQL through the
//! group-commit writer, then into the cached lists; or, when MySQL is away or the
//! user's earlier saves still wait there, into the outbox, answered `pending`.

use std::time::Duration;

use chat_common::user::validate_user_id;
use chat_proto::{NewMessage, Role, SaveRequest, SaveResponse};

use super::History;
use crate::conversations::{parse_id, title_from_message};
use crate::error::HistoryError;
use crate::metrics;
use crate::outbox::Entry;
use crate::writer::{Row, Save, unix_now_ms};

/// Most messages one `Save` may carry.
pub(crate) const MAX_SAVE: usize = 16;

impl History {
    /// Commits the messages to MySQL in their conversation, then appends them to the
    /// cached lists if any; or, when MySQL is away or the user's earlier saves still
    /// wait in the outbox, queues them there.
    pub async fn save_messages(&self, request: &SaveRequest) -> Result<SaveResponse, HistoryError> {
        validate_user_id(&request.user_id)?;
        validate_request_id(&request.request_id)?;
        let rows = rows_to_save(&request.messages)?;
        let title = rows
            .iter()
            .find(|(role, _, _)| *role == Role::User)
            .map(|(_, text, _)| title_from_message(text))
            .unwrap_or_default();
        let mut save = Save {
            user_id: request.user_id.clone(),
            conversation_id: String::new(),
            title,
            rows,
            request_id: request.request_id.clone(),
            created_at_ms: unix_now_ms(),
        };
        let behind = match self.inner.outbox.has_pending(&request.user_id).await {
            Ok(behind) => behind,
            Err(error) => {
                // Without Redis there is no outbox to be behind, nor to fall back on.
                tracing::warn!(%error, "outbox unreadable; saving to mysql directly");
                false
            }
        };
        if !behind && !self.inner.breaker.open() {
            match self.save_to_mysql(request, &mut save).await {
                Err(error) if error.is_outage() => {
                    self.inner.breaker.failed_with(&error);
                    tracing::warn!(%error, user_id = %request.user_id, "mysql cannot take the save; queueing it");
                }
                saved => return saved,
            }
        }
        self.save_to_outbox(request, save).await
    }

    async fn save_to_mysql(
        &self,
        request: &SaveRequest,
        save: &mut Save,
    ) -> Result<SaveResponse, HistoryError> {
        let work = async {
            save.conversation_id = self.conversation_for_save(request).await?;
            let saved = self.inner.writer.save(save.clone());
            chat_common::observe::db(metrics::MYSQL, "insert", saved).await
        };
        let committed = match tokio::time::timeout(self.inner.save_timeout, work).await {
            Err(_) => return Err(HistoryError::WriteTimedOut),
            Ok(Err(HistoryError::ConversationNotFound)) => {
                // Redis may still point at it or cache its lists (a conversation MySQL
                // lost, as when its data was reset): drop them, so that the next chat
                // asks MySQL which conversation is the latest.
                self.forget_later(&save.user_id, &save.conversation_id);
                return Err(HistoryError::ConversationNotFound);
            }
            Ok(committed) => committed?,
        };
        self.inner.breaker.succeeded();
        if committed.fresh
            && let Err(error) = self
                .inner
                .cache
                .append(&save.user_id, &save.conversation_id, &committed.messages)
                .await
        {
            // MySQL has the messages; lists without them must go, not be left stale.
            tracing::warn!(%error, user_id = %save.user_id, "history cache append failed; dropping the lists");
            self.forget_later(&save.user_id, &save.conversation_id);
        }
        Ok(SaveResponse {
            ids: committed
                .messages
                .iter()
                .map(|message| message.id)
                .collect(),
            conversation_id: save.conversation_id.clone(),
            pending: false,
        })
    }

    /// Queues the save in the outbox, with its messages in the cached lists under
    /// provisional ids. A save naming no conversation starts one, made when drained.
    async fn save_to_outbox(
        &self,
        request: &SaveRequest,
        mut save: Save,
    ) -> Result<SaveResponse, HistoryError> {
        let key = request.conversation_key.as_str();
        let mut create = false;
        if save.conversation_id.is_empty() {
            if !request.conversation_id.is_empty() {
                save.conversation_id = parse_id(&request.conversation_id)?.to_owned();
            } else if key.is_empty() {
                save.conversation_id = uuid::Uuid::new_v4().to_string();
                create = true;
            } else if key.chars().count() > crate::conversations::MAX_KEY_CHARS {
                return Err(HistoryError::BadConversationKey);
            }
        }
        let entry = Entry::new(&save, key, create);
        let json = serde_json::to_string(&entry).map_err(|_| HistoryError::OutboxUnavailable)?;
        let queued = self
            .inner
            .cache
            .append_pending(
                &save.user_id,
                &save.conversation_id,
                &entry.provisional(),
                &json,
                &save.request_id,
            )
            .await;
        if let Err(error) = queued {
            tracing::error!(%error, user_id = %save.user_id, "neither mysql nor the outbox took the save");
            return Err(HistoryError::OutboxUnavailable);
        }
        if let Err(error) = self.inner.outbox.list_user(&save.user_id).await {
            // The entry is safe; the drainer's sweep of the streams finds it.
            tracing::warn!(%error, user_id = %save.user_id, "listing the user for the drainer failed");
        }
        metrics::outbox_queued();
        self.inner.queued.notify_one();
        Ok(SaveResponse {
            ids: Vec::new(),
            conversation_id: save.conversation_id,
            pending: true,
        })
    }

    /// Drops the user's cached lists in the background, retrying while Redis fails,
    /// so lists that missed an append do not outlive the failure.
    fn forget_later(&self, user_id: &str, conversation_id: &str) {
        let (history, user_id) = (self.clone(), user_id.to_owned());
        let conversations = vec![conversation_id.to_owned()];
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            for _ in 0..12 {
                match history.cache().forget(&user_id, &conversations).await {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::warn!(%error, "dropping stale cached lists failed; retrying")
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            tracing::error!(%user_id, "cached lists may be stale until they expire");
        });
    }
}

/// A request id is 1 to 64 characters of `[A-Za-z0-9._:-]` (or none at all).
fn validate_request_id(request_id: &str) -> Result<(), HistoryError> {
    let fits = request_id.len() <= 64
        && request_id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._:-".contains(&byte));
    if fits {
        Ok(())
    } else {
        Err(HistoryError::BadRequestId)
    }
}

/// The rows of a save, refused whole if it is empty, too large, or holds a message of
/// a role the history does not keep.
fn rows_to_save(messages: &[NewMessage]) -> Result<Vec<Row>, HistoryError> {
    if messages.is_empty() || messages.len() > MAX_SAVE {
        return Err(HistoryError::BadMessageCount);
    }
    messages
        .iter()
        .map(|message| match message.role() {
            role @ (Role::User | Role::Assistant) => {
                Ok((role, message.text.clone(), message.incomplete))
            }
            _ => Err(HistoryError::BadRole),
        })
        .collect()
}

//! Deleting: one conversation with its messages, or everything a user has, in one
//! transaction each, then the cached lists they leave behind.

use chat_common::user::validate_user_id;
use chat_proto::{ConversationRequest, EraseUserRequest, EraseUserResponse};
use mysql_async::TxOpts;
use mysql_async::prelude::Queryable;

use super::fields::parse_id;
use crate::History;
use crate::error::HistoryError;

/// Deletes may touch many rows: they get this many times the usual timeout.
const DELETE_PATIENCE: u32 = 10;

impl History {
    /// Deletes the conversation's messages and itself in one transaction, then its
    /// cached lists. The cache is cleared even when MySQL had nothing (a retry after
    /// Redis failed): the keys are the caller's own.
    pub(crate) async fn delete(&self, request: &ConversationRequest) -> Result<(), HistoryError> {
        validate_user_id(&request.user_id)?;
        let conversation_id = parse_id(&request.conversation_id)?;
        let user_id = request.user_id.as_str();
        let found = self
            .with_mysql("delete", DELETE_PATIENCE, async |connection| {
                let mut transaction = connection.start_transaction(TxOpts::default()).await?;
                let found: Option<String> = transaction
                    .exec_first(
                        "SELECT id FROM conversations WHERE id = ? AND user_id = ? FOR UPDATE",
                        (conversation_id, user_id),
                    )
                    .await?;
                if found.is_some() {
                    transaction
                        .exec_drop(
                            "DELETE FROM chat_history WHERE user_id = ? AND conversation_id = ?",
                            (user_id, conversation_id),
                        )
                        .await?;
                    transaction
                        .exec_drop(
                            "DELETE FROM conversations WHERE id = ? AND user_id = ?",
                            (conversation_id, user_id),
                        )
                        .await?;
                }
                transaction.commit().await?;
                Ok(found.is_some())
            })
            .await?;
        if let Err(error) = self
            .cache()
            .forget(user_id, &[conversation_id.to_owned()])
            .await
        {
            tracing::warn!(%error, user_id, conversation_id, "clearing a deleted conversation from the cache failed");
            return Err(HistoryError::CacheNotCleared);
        }
        if found {
            Ok(())
        } else {
            Err(HistoryError::ConversationNotFound)
        }
    }

    /// Every conversation and message of the user, in one transaction, then every
    /// cached list of theirs. Quota counters stay: erasing them would reset the day's
    /// spending.
    pub(crate) async fn erase(
        &self,
        request: &EraseUserRequest,
    ) -> Result<EraseUserResponse, HistoryError> {
        validate_user_id(&request.user_id)?;
        let user_id = request.user_id.as_str();
        let erased = self
            .with_mysql("delete", DELETE_PATIENCE, async |connection| {
                let mut transaction = connection.start_transaction(TxOpts::default()).await?;
                // Locks the user's conversations first: a save into one of them waits,
                // then finds it gone.
                let _: Vec<String> = transaction
                    .exec(
                        "SELECT id FROM conversations WHERE user_id = ? FOR UPDATE",
                        (user_id,),
                    )
                    .await?;
                transaction
                    .exec_drop("DELETE FROM chat_history WHERE user_id = ?", (user_id,))
                    .await?;
                let messages = transaction.affected_rows() as i64;
                transaction
                    .exec_drop("DELETE FROM conversations WHERE user_id = ?", (user_id,))
                    .await?;
                let conversations = transaction.affected_rows() as i64;
                transaction.commit().await?;
                Ok(EraseUserResponse {
                    conversations,
                    messages,
                })
            })
            .await?;
        if let Err(error) = self.cache().forget_user(user_id).await {
            tracing::warn!(%error, user_id, "clearing an erased user from the cache failed");
            return Err(HistoryError::CacheNotCleared);
        }
        tracing::info!(
            user_id,
            conversations = erased.conversations,
            messages = erased.messages,
            "user's history erased"
        );
        Ok(erased)
    }
}

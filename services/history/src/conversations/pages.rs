//! Listing: a user's conversations, and one conversation's messages, a page at a time.
//!
//! Keyset-paginated: conversations by last activity (`updated_at`, then id, both
//! descending, through the `(user_id, updated_at, id)` index), messages by id. A cursor
//! is the position of the last item of the page before. A conversation with activity
//! while someone pages moves to the front; it is not listed twice on the way.

use chat_common::user::validate_user_id;
use chat_proto::{
    Conversation, ListConversationMessagesRequest, ListConversationMessagesResponse,
    ListConversationsRequest, ListConversationsResponse, StoredMessage,
};
use mysql_async::prelude::Queryable;

use super::fields::{
    conversation_cursor, page_size, parse_conversation_cursor, parse_id, parse_message_cursor,
};
use super::{COLUMNS, ConversationRow, conversation, find};
use crate::History;
use crate::error::HistoryError;
use crate::store::{MessageRow, cached_message, oldest_first, stored_message};

const DEFAULT_CONVERSATIONS: u32 = 20;
const MAX_CONVERSATIONS: u32 = 100;
const DEFAULT_MESSAGES: u32 = 50;
const MAX_MESSAGES: u32 = 200;

impl History {
    pub(crate) async fn conversations_page(
        &self,
        request: &ListConversationsRequest,
    ) -> Result<ListConversationsResponse, HistoryError> {
        validate_user_id(&request.user_id)?;
        let limit = page_size(request.limit, DEFAULT_CONVERSATIONS, MAX_CONVERSATIONS);
        let after = match request.cursor.as_str() {
            "" => None,
            cursor => Some(parse_conversation_cursor(cursor)?),
        };
        let user_id = request.user_id.as_str();
        // One more than the page, to know whether there is a next one.
        let rows: Vec<ConversationRow> = self
            .with_mysql("select", 1, async |connection| {
                let rows = match after {
                    None => {
                        connection
                            .exec(
                                format!(
                                    "SELECT {COLUMNS} FROM conversations WHERE user_id = ?
                                     ORDER BY updated_at DESC, id DESC LIMIT ?"
                                ),
                                (user_id, limit + 1),
                            )
                            .await?
                    }
                    Some((updated, id)) => {
                        connection
                            .exec(
                                format!(
                                    "SELECT {COLUMNS} FROM conversations
                                     WHERE user_id = ?
                                       AND (updated_at < FROM_UNIXTIME(? / 1000)
                                            OR (updated_at = FROM_UNIXTIME(? / 1000) AND id < ?))
                                     ORDER BY updated_at DESC, id DESC LIMIT ?"
                                ),
                                (user_id, updated, updated, id, limit + 1),
                            )
                            .await?
                    }
                };
                Ok(rows)
            })
            .await?;
        let mut conversations: Vec<Conversation> = rows.into_iter().map(conversation).collect();
        let more = conversations.len() > limit as usize;
        conversations.truncate(limit as usize);
        let next_cursor = match conversations.last() {
            Some(last) if more => conversation_cursor(last),
            _ => String::new(),
        };
        Ok(ListConversationsResponse {
            conversations,
            next_cursor,
        })
    }

    pub(crate) async fn messages_page(
        &self,
        request: &ListConversationMessagesRequest,
    ) -> Result<ListConversationMessagesResponse, HistoryError> {
        validate_user_id(&request.user_id)?;
        let conversation_id = parse_id(&request.conversation_id)?;
        let limit = page_size(request.limit, DEFAULT_MESSAGES, MAX_MESSAGES);
        let after = match request.cursor.as_str() {
            "" => 0,
            cursor => parse_message_cursor(cursor)?,
        };
        let user_id = request.user_id.as_str();
        let read: Result<Vec<MessageRow>, HistoryError> = self
            .with_mysql("select", 1, async |connection| {
                find(connection, user_id, conversation_id).await?;
                Ok(connection
                    .exec(
                        "SELECT id, role, text, CAST(UNIX_TIMESTAMP(created_at) * 1000 AS SIGNED), incomplete
                         FROM chat_history
                         WHERE user_id = ? AND conversation_id = ? AND id > ?
                         ORDER BY id LIMIT ?",
                        (user_id, conversation_id, after, limit + 1),
                    )
                    .await?)
            })
            .await;
        let rows = match read {
            // MySQL is away: the first page is the newest messages the cache and the
            // outbox hold, in one page, rather than nothing.
            Err(error) if error.is_outage() && after == 0 => {
                return self
                    .recent_while_away(user_id, conversation_id, limit)
                    .await
                    .map_err(|_| error);
            }
            read => read?,
        };
        let more = rows.len() > limit as usize;
        let messages: Vec<StoredMessage> = rows
            .into_iter()
            .take(limit as usize)
            .map(|row| stored_message(cached_message(row)))
            .collect();
        let next_cursor = match messages.last() {
            Some(last) if more => last.id.to_string(),
            _ => String::new(),
        };
        Ok(ListConversationMessagesResponse {
            messages,
            next_cursor,
        })
    }

    async fn recent_while_away(
        &self,
        user_id: &str,
        conversation_id: &str,
        limit: u32,
    ) -> Result<ListConversationMessagesResponse, HistoryError> {
        let scope = crate::cache::Scope::Conversation {
            user_id,
            conversation_id,
        };
        let (newest, _) = self.newest(scope, limit.min(self.cache().size())).await?;
        Ok(ListConversationMessagesResponse {
            messages: oldest_first(newest),
            next_cursor: String::new(),
        })
    }
}

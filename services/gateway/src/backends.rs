//! The gRPC clients of the gateway, created once and shared by every request, each
//! call with its own deadline. Spans, trace propagation, deadlines and `rpc_client_*`
//! metrics come from the layer under every channel ([`chat_common::observe`]).

use std::future::Future;
use std::time::Duration;

use chat_common::grpc::{ObservedChannel, observed_channel};
use chat_common::observe::Deadline;
use chat_common::shutdown::Shutdown;
use chat_proto::account_service_client::AccountServiceClient;
use chat_proto::filter_service_client::FilterServiceClient;
use chat_proto::history_service_client::HistoryServiceClient;
use chat_proto::keyword_service_client::KeywordServiceClient;
use chat_proto::llm_service_client::LlmServiceClient;
use chat_proto::token_service_client::TokenServiceClient;
use chat_proto::{
    CompleteChunk, CompleteRequest, CompleteResponse, Conversation, ExtendRequest, ExtendResponse,
    FilterRequest, FilterResponse, LatestConversationRequest, ListRequest, NewMessage, QuotaState,
    RemainingRequest, ReserveRequest, ReserveResponse, SaveRequest, SaveResponse, SettleRequest,
    SettleResponse, StoredMessage,
};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::{ApiError, Settings};

/// The least time `GET /search` waits for the keyword service, in milliseconds.
const SEARCH_TIMEOUT_MS: u64 = 3000;

/// The accounts service's client, as the calls through [`Backends::accounts`] get it.
pub type AccountsClient = AccountServiceClient<ObservedChannel>;

/// Cheap to clone: the channels are shared and multiplex requests over HTTP/2.
#[derive(Clone)]
pub struct Backends {
    filter: FilterServiceClient<ObservedChannel>,
    token: TokenServiceClient<ObservedChannel>,
    llm: LlmServiceClient<ObservedChannel>,
    history: HistoryServiceClient<ObservedChannel>,
    accounts: AccountsClient,
    /// None when `KEYWORD_ADDR` is empty: no retrieval, no search.
    keyword: Option<KeywordServiceClient<ObservedChannel>>,
    keyword_deadline: Deadline,
    search_deadline: Deadline,
    filter_deadline: Deadline,
    token_deadline: Deadline,
    llm_deadline: Deadline,
    history_deadline: Deadline,
    accounts_deadline: Deadline,
    /// The shutdown whose drain waits for work these calls leave running in the
    /// background (settlements being retried); one of their own until
    /// [`Backends::with_shutdown`] names the process's.
    background: Shutdown,
}

fn deadline(millis: u64) -> Deadline {
    Deadline(Duration::from_millis(millis))
}

impl Backends {
    /// Connects lazily: the gateway starts even while the services are still coming up.
    pub fn connect(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            filter: FilterServiceClient::new(observed_channel(&settings.filter_addr)?),
            token: TokenServiceClient::new(observed_channel(&settings.token_addr)?),
            llm: LlmServiceClient::new(observed_channel(&settings.llm_addr)?),
            history: HistoryServiceClient::new(observed_channel(&settings.history_addr)?),
            // Accounts are served by the history service, beside the history.
            accounts: AccountServiceClient::new(observed_channel(&settings.history_addr)?),
            keyword: match settings.keyword_addr.as_str() {
                "" => None,
                addr => Some(KeywordServiceClient::new(observed_channel(addr)?)),
            },
            keyword_deadline: deadline(settings.keyword_timeout_ms),
            // A person waits on `GET /search`, not a chat: more time than retrieval's.
            search_deadline: deadline(settings.keyword_timeout_ms.max(SEARCH_TIMEOUT_MS)),
            filter_deadline: deadline(settings.filter_timeout_ms),
            token_deadline: deadline(settings.token_timeout_ms),
            llm_deadline: deadline(settings.llm_timeout_ms),
            history_deadline: deadline(settings.history_timeout_ms),
            accounts_deadline: deadline(settings.accounts_timeout_ms),
            background: Shutdown::new(settings.shutdown_grace_secs),
        })
    }

    /// The same clients, with their background work waited for by `stopping`'s drain.
    pub fn with_shutdown(mut self, stopping: Shutdown) -> Self {
        self.background = stopping;
        self
    }

    /// The shutdown background work belongs to.
    pub fn background(&self) -> &Shutdown {
        &self.background
    }

    /// Whether a keyword service is configured.
    pub fn has_keyword(&self) -> bool {
        self.keyword.is_some()
    }

    /// The caller's messages that match a query, best first: within `KEYWORD_TIMEOUT_MS`
    /// for retrieval, longer for a person's search (`interactive`).
    pub async fn search(
        &self,
        message: chat_proto::SearchRequest,
        interactive: bool,
    ) -> Result<Vec<chat_proto::SearchHit>, Status> {
        let Some(keyword) = &self.keyword else {
            return Err(Status::unavailable(
                "no keyword service is configured (KEYWORD_ADDR)",
            ));
        };
        let deadline = if interactive {
            self.search_deadline
        } else {
            self.keyword_deadline
        };
        let request = deadline.unary(message);
        Ok(keyword.clone().search(request).await?.into_inner().hits)
    }

    pub async fn filter(&self, text: String) -> Result<FilterResponse, Status> {
        let request = self.filter_deadline.unary(FilterRequest { text });
        Ok(self.filter.clone().filter(request).await?.into_inner())
    }

    pub async fn reserve(&self, message: ReserveRequest) -> Result<ReserveResponse, Status> {
        let request = self.token_deadline.unary(message);
        Ok(self.token.clone().reserve(request).await?.into_inner())
    }

    pub async fn settle(&self, message: SettleRequest) -> Result<SettleResponse, Status> {
        let request = self.token_deadline.unary(message);
        Ok(self.token.clone().settle(request).await?.into_inner())
    }

    /// Keeps an open reservation from the sweeper a lifetime longer.
    pub async fn extend(&self, message: ExtendRequest) -> Result<ExtendResponse, Status> {
        let request = self.token_deadline.unary(message);
        Ok(self.token.clone().extend(request).await?.into_inner())
    }

    pub async fn remaining(
        &self,
        user_id: &str,
        daily_limit: Option<i64>,
    ) -> Result<QuotaState, Status> {
        let request = self.token_deadline.unary(RemainingRequest {
            user_id: user_id.to_owned(),
            daily_limit,
        });
        Ok(self.token.clone().remaining(request).await?.into_inner())
    }

    pub async fn complete(&self, message: CompleteRequest) -> Result<CompleteResponse, Status> {
        let request = self.llm_deadline.unary(message);
        Ok(self.llm.clone().complete(request).await?.into_inner())
    }

    /// Opens a streamed completion; the deadline bounds the opening only.
    pub async fn complete_stream(
        &self,
        message: CompleteRequest,
    ) -> Result<Streaming<CompleteChunk>, Status> {
        let request = self.llm_deadline.opening(message);
        Ok(self
            .llm
            .clone()
            .complete_stream(request)
            .await?
            .into_inner())
    }

    /// How long to wait for each message of a streamed completion.
    pub fn llm_deadline(&self) -> Duration {
        self.llm_deadline.0
    }

    pub async fn save(&self, user_id: &str, messages: Vec<NewMessage>) -> Result<Vec<i64>, Status> {
        let request = self.history_deadline.unary(SaveRequest {
            user_id: user_id.to_owned(),
            messages,
            ..SaveRequest::default()
        });
        Ok(self.history.clone().save(request).await?.into_inner().ids)
    }

    pub async fn history(&self, user_id: &str, limit: u32) -> Result<Vec<StoredMessage>, Status> {
        let request = self.history_deadline.unary(ListRequest {
            user_id: user_id.to_owned(),
            limit,
            ..ListRequest::default()
        });
        Ok(self
            .history
            .clone()
            .list(request)
            .await?
            .into_inner()
            .messages)
    }

    /// Saves a turn into the conversation the request names (a new one when it names
    /// none); answers where it went, or `None` when neither MySQL nor the history's
    /// outbox took it. `new_if_gone`: the conversation was not the caller's choice but
    /// the latest one history named, so if it is gone (MySQL lost it while Redis still
    /// pointed at it) the turn starts a new one rather than being lost.
    pub async fn save_turn(
        &self,
        mut turn: SaveRequest,
        new_if_gone: bool,
    ) -> Option<SaveResponse> {
        if turn.request_id.is_empty() {
            turn.request_id = uuid::Uuid::new_v4().simple().to_string();
        }
        match self.save_retried(&turn).await {
            Err(Code::NotFound) if new_if_gone && !turn.conversation_id.is_empty() => {
                turn.conversation_id.clear();
                self.save_retried(&turn).await.ok()
            }
            saved => saved.ok(),
        }
    }

    /// One save, retried once under the same request id, so a save whose answer was
    /// lost is not stored twice; the code of the last failure otherwise.
    async fn save_retried(&self, turn: &SaveRequest) -> Result<SaveResponse, Code> {
        let mut failed = Code::Unknown;
        for attempt in 1..=2 {
            let request = self.history_deadline.unary(turn.clone());
            match self.history.clone().save(request).await {
                Ok(saved) => return Ok(saved.into_inner()),
                Err(status) => {
                    tracing::error!(
                        attempt,
                        user_id = %turn.user_id,
                        conversation_id = %turn.conversation_id,
                        request_id = %turn.request_id,
                        code = ?status.code(),
                        message = %status.message(),
                        "saving the turn to history failed"
                    );
                    failed = status.code();
                    // Deleted mid-turn, or refused: a retry cannot change that.
                    if matches!(failed, Code::NotFound | Code::InvalidArgument) {
                        break;
                    }
                }
            }
        }
        Err(failed)
    }

    /// The newest messages of one conversation of the user, oldest first: a chat's
    /// context. NOT_FOUND when the conversation is not theirs.
    pub async fn context(
        &self,
        user_id: &str,
        conversation_id: &str,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, Status> {
        let request = self.history_deadline.unary(ListRequest {
            user_id: user_id.to_owned(),
            limit,
            conversation_id: conversation_id.to_owned(),
            ..ListRequest::default()
        });
        Ok(self
            .history
            .clone()
            .list(request)
            .await?
            .into_inner()
            .messages)
    }

    /// The user's most recently active conversation (created when they have none) and
    /// its newest `limit` messages, in one call.
    pub async fn latest_context(
        &self,
        user_id: &str,
        limit: u32,
    ) -> Result<(String, Vec<StoredMessage>), Status> {
        let request = self.history_deadline.unary(ListRequest {
            user_id: user_id.to_owned(),
            limit,
            latest_conversation: true,
            ..ListRequest::default()
        });
        let answer = self.history.clone().list(request).await?.into_inner();
        if answer.conversation_id.is_empty() {
            // A history service from before `latest_conversation` (a rolling upgrade):
            // it answered the user's messages, not a conversation's. Ask as it knows.
            let latest = self.latest_conversation(user_id).await?;
            let earlier = self.context(user_id, &latest.id, limit).await?;
            return Ok((latest.id, earlier));
        }
        Ok((answer.conversation_id, answer.messages))
    }

    /// The user's most recently active conversation, created when they have none.
    pub async fn latest_conversation(&self, user_id: &str) -> Result<Conversation, Status> {
        let request = self.history_deadline.unary(LatestConversationRequest {
            user_id: user_id.to_owned(),
        });
        Ok(self
            .history
            .clone()
            .latest_conversation(request)
            .await?
            .into_inner())
    }

    /// One call to the history service about conversations. `patient` gives it ten
    /// times the usual deadline: a delete may remove many rows.
    pub async fn conversations<M, T, F, Fut>(
        &self,
        message: M,
        patient: bool,
        call: F,
    ) -> Result<T, Status>
    where
        F: FnOnce(HistoryServiceClient<ObservedChannel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = match patient {
            true => Deadline(self.history_deadline.0 * 10),
            false => self.history_deadline,
        };
        let request = deadline.unary(message);
        call(self.history.clone(), request)
            .await
            .map(Response::into_inner)
    }

    /// One call to the accounts service, its refusals mapped to the caller's errors
    /// (401, 403, 404, 409, 400, 429) and its failures to 5xx.
    pub async fn accounts<M, T, F, Fut>(&self, message: M, call: F) -> Result<T, ApiError>
    where
        F: FnOnce(AccountsClient, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let request = self.accounts_deadline.unary(message);
        call(self.accounts.clone(), request)
            .await
            .map(Response::into_inner)
            .map_err(ApiError::from_accounts)
    }
}

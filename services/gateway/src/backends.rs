//! The gRPC clients of the gateway, created once and shared by every request, each
//! call with its own deadline.

use std::time::Duration;

use chat_common::grpc::lazy_channel;
use chat_common::observe::{server_streaming, unary};
use chat_proto::filter_service_client::FilterServiceClient;
use chat_proto::history_service_client::HistoryServiceClient;
use chat_proto::llm_service_client::LlmServiceClient;
use chat_proto::token_service_client::TokenServiceClient;
use chat_proto::{
    CompleteChunk, CompleteRequest, CompleteResponse, FilterRequest, FilterResponse, ListRequest,
    NewMessage, QuotaState, RemainingRequest, ReserveRequest, ReserveResponse, SaveRequest,
    SettleRequest, SettleResponse, StoredMessage,
};
use tonic::Status;
use tonic::transport::Channel;

use crate::Settings;

const FILTER: &str = "chat.v1.FilterService";
const TOKEN: &str = "chat.v1.TokenService";
const LLM: &str = "chat.v1.LlmService";
const HISTORY: &str = "chat.v1.HistoryService";

/// Cheap to clone: the channels are shared and multiplex requests over HTTP/2.
#[derive(Clone)]
pub struct Backends {
    filter: FilterServiceClient<Channel>,
    token: TokenServiceClient<Channel>,
    llm: LlmServiceClient<Channel>,
    history: HistoryServiceClient<Channel>,
    filter_deadline: Duration,
    token_deadline: Duration,
    llm_deadline: Duration,
    history_deadline: Duration,
}

impl Backends {
    /// Connects lazily: the gateway starts even while the services are still coming up.
    pub fn connect(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            filter: FilterServiceClient::new(lazy_channel(&settings.filter_addr)?),
            token: TokenServiceClient::new(lazy_channel(&settings.token_addr)?),
            llm: LlmServiceClient::new(lazy_channel(&settings.llm_addr)?),
            history: HistoryServiceClient::new(lazy_channel(&settings.history_addr)?),
            filter_deadline: Duration::from_millis(settings.filter_timeout_ms),
            token_deadline: Duration::from_millis(settings.token_timeout_ms),
            llm_deadline: Duration::from_millis(settings.llm_timeout_ms),
            history_deadline: Duration::from_millis(settings.history_timeout_ms),
        })
    }

    pub async fn filter(&self, text: String) -> Result<FilterResponse, Status> {
        let mut client = self.filter.clone();
        let message = FilterRequest { text };
        unary(
            FILTER,
            "Filter",
            self.filter_deadline,
            message,
            |request| async move { client.filter(request).await },
        )
        .await
    }

    pub async fn reserve(&self, message: ReserveRequest) -> Result<ReserveResponse, Status> {
        let mut client = self.token.clone();
        unary(
            TOKEN,
            "Reserve",
            self.token_deadline,
            message,
            |request| async move { client.reserve(request).await },
        )
        .await
    }

    pub async fn settle(&self, message: SettleRequest) -> Result<SettleResponse, Status> {
        let mut client = self.token.clone();
        unary(
            TOKEN,
            "Settle",
            self.token_deadline,
            message,
            |request| async move { client.settle(request).await },
        )
        .await
    }

    pub async fn remaining(&self, user_id: &str) -> Result<QuotaState, Status> {
        let mut client = self.token.clone();
        let message = RemainingRequest {
            user_id: user_id.to_owned(),
        };
        unary(
            TOKEN,
            "Remaining",
            self.token_deadline,
            message,
            |request| async move { client.remaining(request).await },
        )
        .await
    }

    pub async fn complete(&self, message: CompleteRequest) -> Result<CompleteResponse, Status> {
        let mut client = self.llm.clone();
        unary(
            LLM,
            "Complete",
            self.llm_deadline,
            message,
            |request| async move { client.complete(request).await },
        )
        .await
    }

    /// Opens a streamed completion; the deadline bounds the opening only.
    pub async fn complete_stream(
        &self,
        message: CompleteRequest,
    ) -> Result<tonic::Streaming<CompleteChunk>, Status> {
        let mut client = self.llm.clone();
        server_streaming(
            LLM,
            "CompleteStream",
            self.llm_deadline,
            message,
            |request| async move { client.complete_stream(request).await },
        )
        .await
    }

    /// How long to wait for each message of a streamed completion.
    pub fn llm_deadline(&self) -> Duration {
        self.llm_deadline
    }

    pub async fn save(&self, user_id: &str, messages: Vec<NewMessage>) -> Result<Vec<i64>, Status> {
        let mut client = self.history.clone();
        let message = SaveRequest {
            user_id: user_id.to_owned(),
            messages,
        };
        let saved = unary(
            HISTORY,
            "Save",
            self.history_deadline,
            message,
            |request| async move { client.save(request).await },
        )
        .await?;
        Ok(saved.ids)
    }

    pub async fn history(&self, user_id: &str, limit: u32) -> Result<Vec<StoredMessage>, Status> {
        let mut client = self.history.clone();
        let message = ListRequest {
            user_id: user_id.to_owned(),
            limit,
        };
        let listed = unary(
            HISTORY,
            "List",
            self.history_deadline,
            message,
            |request| async move { client.list(request).await },
        )
        .await?;
        Ok(listed.messages)
    }
}

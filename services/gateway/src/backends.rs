//! The gRPC clients of the gateway, created once and shared by every request, each
//! call with its own deadline.

use std::time::Duration;

use chat_common::grpc::{call, lazy_channel, request};
use chat_proto::filter_service_client::FilterServiceClient;
use chat_proto::history_service_client::HistoryServiceClient;
use chat_proto::llm_service_client::LlmServiceClient;
use chat_proto::token_service_client::TokenServiceClient;
use chat_proto::{
    CompleteRequest, CompleteResponse, FilterRequest, FilterResponse, ListRequest, NewMessage,
    QuotaState, RemainingRequest, ReserveRequest, ReserveResponse, SaveRequest, SettleRequest,
    SettleResponse, StoredMessage,
};
use tonic::Status;
use tonic::transport::Channel;

use crate::Settings;

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
            filter_deadline: Settings::millis(settings.filter_timeout_ms),
            token_deadline: Settings::millis(settings.token_timeout_ms),
            llm_deadline: Settings::millis(settings.llm_timeout_ms),
            history_deadline: Settings::millis(settings.history_timeout_ms),
        })
    }

    pub async fn filter(&self, text: String) -> Result<FilterResponse, Status> {
        let deadline = self.filter_deadline;
        let mut client = self.filter.clone();
        call(
            deadline,
            client.filter(request(FilterRequest { text }, deadline)),
        )
        .await
    }

    pub async fn reserve(&self, message: ReserveRequest) -> Result<ReserveResponse, Status> {
        let deadline = self.token_deadline;
        let mut client = self.token.clone();
        call(deadline, client.reserve(request(message, deadline))).await
    }

    pub async fn settle(&self, message: SettleRequest) -> Result<SettleResponse, Status> {
        let deadline = self.token_deadline;
        let mut client = self.token.clone();
        call(deadline, client.settle(request(message, deadline))).await
    }

    pub async fn remaining(&self, user_id: &str) -> Result<QuotaState, Status> {
        let deadline = self.token_deadline;
        let mut client = self.token.clone();
        let message = RemainingRequest {
            user_id: user_id.to_owned(),
        };
        call(deadline, client.remaining(request(message, deadline))).await
    }

    pub async fn complete(&self, message: CompleteRequest) -> Result<CompleteResponse, Status> {
        let deadline = self.llm_deadline;
        let mut client = self.llm.clone();
        call(deadline, client.complete(request(message, deadline))).await
    }

    pub async fn save(&self, user_id: &str, messages: Vec<NewMessage>) -> Result<Vec<i64>, Status> {
        let deadline = self.history_deadline;
        let mut client = self.history.clone();
        let message = SaveRequest {
            user_id: user_id.to_owned(),
            messages,
        };
        Ok(call(deadline, client.save(request(message, deadline)))
            .await?
            .ids)
    }

    pub async fn history(&self, user_id: &str, limit: u32) -> Result<Vec<StoredMessage>, Status> {
        let deadline = self.history_deadline;
        let mut client = self.history.clone();
        let message = ListRequest {
            user_id: user_id.to_owned(),
            limit,
        };
        Ok(call(deadline, client.list(request(message, deadline)))
            .await?
            .messages)
    }
}

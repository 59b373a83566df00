//! The gRPC edge: requests go to [`Quota`], and its errors become statuses here and
//! nowhere else, through the shared `ErrorCode`.

use chat_proto::token_service_server::TokenService;
use chat_proto::{
    ExtendRequest, ExtendResponse, QuotaState, RemainingRequest, ReserveRequest, ReserveResponse,
    SettleRequest, SettleResponse,
};
use tonic::{Request, Response, Status};

use crate::Quota;
use crate::error::QuotaError;

#[tonic::async_trait]
impl TokenService for Quota {
    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        Ok(Response::new(self.reserve_tokens(request.get_ref()).await?))
    }

    async fn settle(
        &self,
        request: Request<SettleRequest>,
    ) -> Result<Response<SettleResponse>, Status> {
        Ok(Response::new(self.settle_tokens(request.get_ref()).await?))
    }

    async fn remaining(
        &self,
        request: Request<RemainingRequest>,
    ) -> Result<Response<QuotaState>, Status> {
        Ok(Response::new(
            self.remaining_tokens(request.get_ref()).await?,
        ))
    }

    async fn extend(
        &self,
        request: Request<ExtendRequest>,
    ) -> Result<Response<ExtendResponse>, Status> {
        Ok(Response::new(
            self.extend_reservation(request.get_ref()).await?,
        ))
    }
}

impl From<QuotaError> for Status {
    fn from(error: QuotaError) -> Self {
        Status::new(error.code().grpc_code(), error.to_string())
    }
}

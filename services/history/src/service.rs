//! The gRPC edge: requests go to [`History`], and its errors become statuses here and
//! nowhere else, through the shared `ErrorCode`.

use chat_proto::history_service_server::HistoryService;
use chat_proto::{ListRequest, ListResponse, SaveRequest, SaveResponse};
use tonic::{Request, Response, Status};

use crate::History;
use crate::error::HistoryError;

#[tonic::async_trait]
impl HistoryService for History {
    async fn save(&self, request: Request<SaveRequest>) -> Result<Response<SaveResponse>, Status> {
        Ok(Response::new(self.save_messages(request.get_ref()).await?))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        Ok(Response::new(self.list_messages(request.get_ref()).await?))
    }
}

impl From<HistoryError> for Status {
    fn from(error: HistoryError) -> Self {
        Status::new(error.code().grpc_code(), error.to_string())
    }
}

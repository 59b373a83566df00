//! The gRPC edge: texts go to [`Filter`], and its errors become statuses here and
//! nowhere else, through the shared `ErrorCode`. The gateway relies on
//! `InvalidArgument` for a text that is empty or too long.

use chat_proto::filter_service_server::FilterService;
use chat_proto::{FilterRequest, FilterResponse};
use tonic::{Request, Response, Status};

use crate::Filter;
use crate::error::FilterError;

#[tonic::async_trait]
impl FilterService for Filter {
    async fn filter(
        &self,
        request: Request<FilterRequest>,
    ) -> Result<Response<FilterResponse>, Status> {
        let verdict = self.check(&request.get_ref().text)?;
        if verdict.blocked {
            tracing::info!(matched = %verdict.matched, "text blocked");
        }
        Ok(Response::new(verdict))
    }
}

impl From<FilterError> for Status {
    fn from(error: FilterError) -> Self {
        Status::new(error.code().grpc_code(), error.to_string())
    }
}

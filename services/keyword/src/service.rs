//! The gRPC edge: requests go to the analyzer and the index, and their errors become
//! statuses here and nowhere else, through the shared `ErrorCode`.

use chat_proto::keyword_service_server::KeywordService;
use chat_proto::{
    ExtractRequest, ExtractResponse, Keyword, ReindexRequest, ReindexResponse, SearchRequest,
    SearchResponse,
};
use tonic::{Request, Response, Status};

use crate::error::KeywordError;
use crate::index::Index;

/// Longest text `Extract` takes, in characters.
const MAX_EXTRACT_CHARS: usize = 100_000;

#[tonic::async_trait]
impl KeywordService for Index {
    async fn extract(
        &self,
        request: Request<ExtractRequest>,
    ) -> Result<Response<ExtractResponse>, Status> {
        let ExtractRequest { text, limit } = request.into_inner();
        if text.chars().count() > MAX_EXTRACT_CHARS {
            return Err(KeywordError::TooLong(MAX_EXTRACT_CHARS).into());
        }
        let limit = match limit {
            0 => 10,
            limit => limit.min(100) as usize,
        };
        let analyzer = self.analyzer.clone();
        let keywords = tokio::task::spawn_blocking(move || analyzer.keywords(&text, limit))
            .await
            .map_err(|error| Status::internal(error.to_string()))?;
        Ok(Response::new(ExtractResponse {
            keywords: keywords
                .into_iter()
                .map(|(term, weight)| Keyword { term, weight })
                .collect(),
        }))
    }

    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let hits = Index::search(self, request.get_ref()).await?;
        Ok(Response::new(SearchResponse { hits }))
    }

    async fn reindex(
        &self,
        request: Request<ReindexRequest>,
    ) -> Result<Response<ReindexResponse>, Status> {
        let user_id = &request.get_ref().user_id;
        let user = if user_id.is_empty() {
            None
        } else {
            chat_common::user::validate_user_id(user_id).map_err(KeywordError::from)?;
            Some(user_id.as_str())
        };
        let messages = Index::reindex(self, user).await?;
        Ok(Response::new(ReindexResponse { messages }))
    }
}

impl From<KeywordError> for Status {
    fn from(error: KeywordError) -> Self {
        Status::new(error.code().grpc_code(), error.to_string())
    }
}

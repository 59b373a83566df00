//! The gRPC edge: requests go to [`History`], and its errors become statuses here and
//! nowhere else, through the shared `ErrorCode`.

use chat_proto::history_service_server::HistoryService;
use chat_proto::{
    Conversation, ConversationRequest, CreateConversationRequest, DeleteConversationResponse,
    EraseUserRequest, EraseUserResponse, LatestConversationRequest,
    ListConversationMessagesRequest, ListConversationMessagesResponse, ListConversationsRequest,
    ListConversationsResponse, ListRequest, ListResponse, RenameConversationRequest, SaveRequest,
    SaveResponse,
};
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

    async fn create_conversation(
        &self,
        request: Request<CreateConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        Ok(Response::new(
            self.new_conversation(request.get_ref()).await?,
        ))
    }

    async fn get_conversation(
        &self,
        request: Request<ConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        Ok(Response::new(self.conversation(request.get_ref()).await?))
    }

    async fn latest_conversation(
        &self,
        request: Request<LatestConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        Ok(Response::new(self.latest(request.get_ref()).await?))
    }

    async fn list_conversations(
        &self,
        request: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        Ok(Response::new(
            self.conversations_page(request.get_ref()).await?,
        ))
    }

    async fn rename_conversation(
        &self,
        request: Request<RenameConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        Ok(Response::new(self.rename(request.get_ref()).await?))
    }

    async fn delete_conversation(
        &self,
        request: Request<ConversationRequest>,
    ) -> Result<Response<DeleteConversationResponse>, Status> {
        self.delete(request.get_ref()).await?;
        Ok(Response::new(DeleteConversationResponse {}))
    }

    async fn list_conversation_messages(
        &self,
        request: Request<ListConversationMessagesRequest>,
    ) -> Result<Response<ListConversationMessagesResponse>, Status> {
        Ok(Response::new(self.messages_page(request.get_ref()).await?))
    }

    async fn erase_user(
        &self,
        request: Request<EraseUserRequest>,
    ) -> Result<Response<EraseUserResponse>, Status> {
        Ok(Response::new(self.erase(request.get_ref()).await?))
    }
}

impl From<HistoryError> for Status {
    fn from(error: HistoryError) -> Self {
        Status::new(error.code().grpc_code(), error.to_string())
    }
}

//! The gRPC edge: requests go to [`Accounts`], and its errors become statuses here and
//! nowhere else, through the shared `ErrorCode` (a refused login also says when to
//! retry, in `retry-after` metadata).

use chat_proto::account_service_server::AccountService;
use chat_proto::{
    AuthenticateRequest, BootstrapResponse, CreateKeyRequest, CreateUserRequest, CreatedKey,
    GetUserRequest, ListKeysResponse, LoginRequest, LoginResponse, LogoutResponse, Principal,
    RevokeKeyRequest, RevokeKeyResponse, SessionRequest, UpdateUserRequest, User,
};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::Accounts;
use super::error::AccountError;

type Answer<T> = Result<Response<T>, Status>;

// Each method calls the inherent method of the same name on `Accounts` (inherent
// methods take precedence over trait ones): no recursion.
#[tonic::async_trait]
impl AccountService for Accounts {
    async fn create_user(&self, request: Request<CreateUserRequest>) -> Answer<User> {
        answer(self.create_user(request.get_ref()).await)
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Answer<User> {
        answer(self.get_user(&request.get_ref().user_id).await)
    }

    async fn update_user(&self, request: Request<UpdateUserRequest>) -> Answer<User> {
        answer(self.update_user(request.get_ref()).await)
    }

    async fn bootstrap(&self, request: Request<CreateUserRequest>) -> Answer<BootstrapResponse> {
        let created = self.bootstrap(request.get_ref()).await;
        answer(created.map(|created| BootstrapResponse { created }))
    }

    async fn create_key(&self, request: Request<CreateKeyRequest>) -> Answer<CreatedKey> {
        let request = request.get_ref();
        answer(self.create_key(&request.user_id, &request.name).await)
    }

    async fn list_keys(&self, request: Request<GetUserRequest>) -> Answer<ListKeysResponse> {
        let keys = self.list_keys(&request.get_ref().user_id).await;
        answer(keys.map(|keys| ListKeysResponse { keys }))
    }

    async fn revoke_key(&self, request: Request<RevokeKeyRequest>) -> Answer<RevokeKeyResponse> {
        let revoked = self.revoke_key(&request.get_ref().key_id).await;
        answer(revoked.map(|()| RevokeKeyResponse {}))
    }

    async fn authenticate(&self, request: Request<AuthenticateRequest>) -> Answer<Principal> {
        answer(self.authenticate(&request.get_ref().key).await)
    }

    async fn login(&self, request: Request<LoginRequest>) -> Answer<LoginResponse> {
        answer(self.login(request.get_ref()).await)
    }

    async fn session(&self, request: Request<SessionRequest>) -> Answer<Principal> {
        answer(self.session(&request.get_ref().session_id).await)
    }

    async fn logout(&self, request: Request<SessionRequest>) -> Answer<LogoutResponse> {
        let ended = self.logout(&request.get_ref().session_id).await;
        answer(ended.map(|()| LogoutResponse {}))
    }
}

fn answer<T>(outcome: Result<T, AccountError>) -> Answer<T> {
    outcome.map(Response::new).map_err(Status::from)
}

impl From<AccountError> for Status {
    fn from(error: AccountError) -> Self {
        let mut status = Status::new(error.code().grpc_code(), error.to_string());
        if let Some(seconds) = error.retry_after_seconds() {
            status
                .metadata_mut()
                .insert("retry-after", MetadataValue::from(seconds));
        }
        status
    }
}

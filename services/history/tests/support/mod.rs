//! A history server of the test's own (`chat_history::run` on a port-0 listener, its
//! own MySQL database and Redis prefix), the account calls the tests make on it, and the
//! original service's table for the migrations to upgrade.

#![allow(dead_code)]

use std::future::pending;
use std::time::Duration;

use chat_history::Settings;
use chat_proto::account_service_client::AccountServiceClient;
use chat_proto::{
    ApiKey, AuthenticateRequest, CreateKeyRequest, CreateUserRequest, CreatedKey, GetUserRequest,
    LoginRequest, LoginResponse, Principal, RevokeKeyRequest, SessionRequest, UpdateUserRequest,
    User,
};
use chat_testing::{TestDatabase, TestRedis};
use mysql_async::prelude::Queryable;
use tonic::transport::Channel;
use tonic::{Code, Status};

pub const PASSWORD: &str = "correct horse battery";

/// A history server of its own, with its own database and Redis prefix.
pub struct Server {
    client: AccountServiceClient<Channel>,
    db: TestDatabase,
    _redis: TestRedis,
}

impl Server {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> anyhow::Result<Self> {
        let (db, redis) = (TestDatabase::new().await?, TestRedis::new().await?);
        let mut settings = Settings {
            mysql_dsn: db.url.clone().into(),
            redis_addr: redis.addr.clone(),
            redis_key_prefix: redis.prefix.clone(),
            history_metrics_listen: String::new(),
            // A busy test machine is not a MySQL outage: saves go to the outbox only in
            // the tests that make one (they set their own).
            history_save_timeout_ms: 5000,
            ..Settings::default()
        };
        adjust(&mut settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(chat_history::run(settings, listener, pending()));
        let channel = chat_common::grpc::lazy_channel(&addr.to_string())?;
        let server = Self {
            client: AccountServiceClient::new(channel),
            db,
            _redis: redis,
        };
        server.wait_until_serving().await?;
        Ok(server)
    }

    /// The server answers once its schema is migrated.
    async fn wait_until_serving(&self) -> anyhow::Result<()> {
        for _ in 0..100 {
            let probe = self.client().get_user(get("nobody")).await;
            if probe.as_ref().err().map(Status::code) == Some(Code::NotFound) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the history server did not start")
    }

    pub fn client(&self) -> AccountServiceClient<Channel> {
        self.client.clone()
    }

    pub async fn create(&self, user_id: &str, password: Option<&str>) -> Result<User, Status> {
        let request = CreateUserRequest {
            user_id: user_id.into(),
            password: password.map(Into::into),
            ..CreateUserRequest::default()
        };
        Ok(self.client().create_user(request).await?.into_inner())
    }

    pub async fn update(&self, request: UpdateUserRequest) -> Result<User, Status> {
        Ok(self.client().update_user(request).await?.into_inner())
    }

    pub async fn new_key(&self, user_id: &str, name: &str) -> Result<CreatedKey, Status> {
        let request = CreateKeyRequest {
            user_id: user_id.into(),
            name: name.into(),
        };
        Ok(self.client().create_key(request).await?.into_inner())
    }

    pub async fn authenticate(&self, key: &str) -> Result<Principal, Status> {
        let request = AuthenticateRequest { key: key.into() };
        Ok(self.client().authenticate(request).await?.into_inner())
    }

    /// The API keys of `user_id` as the server lists them.
    pub async fn keys(&self, user_id: &str) -> Result<Vec<ApiKey>, Status> {
        Ok(self
            .client()
            .list_keys(get(user_id))
            .await?
            .into_inner()
            .keys)
    }

    pub async fn revoke(&self, key_id: &str) -> Result<(), Status> {
        let request = RevokeKeyRequest {
            key_id: key_id.into(),
        };
        self.client().revoke_key(request).await.map(|_| ())
    }

    pub async fn login(
        &self,
        user_id: &str,
        password: &str,
        addr: &str,
    ) -> Result<LoginResponse, Status> {
        let request = LoginRequest {
            user_id: user_id.into(),
            password: password.into(),
            client_addr: addr.into(),
        };
        Ok(self.client().login(request).await?.into_inner())
    }

    pub async fn session(&self, session_id: &str) -> Result<Principal, Status> {
        let request = SessionRequest {
            session_id: session_id.into(),
        };
        Ok(self.client().session(request).await?.into_inner())
    }

    pub async fn logout(&self, session_id: &str) -> Result<(), Status> {
        let request = SessionRequest {
            session_id: session_id.into(),
        };
        self.client().logout(request).await.map(|_| ())
    }

    pub async fn bootstrap(&self, user_id: &str) -> Result<bool, Status> {
        let request = CreateUserRequest {
            user_id: user_id.into(),
            password: Some(PASSWORD.into()),
            ..CreateUserRequest::default()
        };
        Ok(self.client().bootstrap(request).await?.into_inner().created)
    }

    /// The server's database, for what the API does not show.
    pub async fn mysql(&self) -> anyhow::Result<mysql_async::Conn> {
        let pool = mysql_async::Pool::new(chat_history::mysql_opts(&self.db.url)?);
        Ok(pool.get_conn().await?)
    }
}

/// A connection to `pool`'s database holding the table exactly as the original Go
/// service created it (`fixtures/original_table.sql`, in a legacy charset, before any
/// migration), with `insert` (an `INSERT` of its rows) run on it.
pub async fn original_table_with(
    pool: &mysql_async::Pool,
    insert: &str,
) -> anyhow::Result<mysql_async::Conn> {
    let mut connection = pool.get_conn().await?;
    connection
        .query_drop(include_str!("../fixtures/original_table.sql"))
        .await?;
    connection.query_drop(insert).await?;
    Ok(connection)
}

pub fn get(user_id: &str) -> GetUserRequest {
    GetUserRequest {
        user_id: user_id.into(),
    }
}

pub fn update(user_id: &str) -> UpdateUserRequest {
    UpdateUserRequest {
        user_id: user_id.into(),
        ..UpdateUserRequest::default()
    }
}

/// The code and message of a refusal; panics on a success, which the test did not expect.
pub fn refusal<T: std::fmt::Debug>(outcome: Result<T, Status>) -> (Code, String) {
    match outcome {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

pub fn code<T: std::fmt::Debug>(outcome: Result<T, Status>) -> Code {
    refusal(outcome).0
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

//! First start: with no users at all, an `admin` user is created so that `docker compose
//! up` ends in a usable login. Its password is `ADMIN_PASSWORD`, or a random one written
//! once to the log, the only place it ever appears.

use std::time::Duration;

use chat_proto::CreateUserRequest;
use secrecy::{ExposeSecret, SecretString};

use crate::{ApiError, Backends};

/// The first user's id.
pub const FIRST_USER: &str = "admin";

/// Keeps trying until the accounts service answers (it may start after the gateway).
pub async fn first_user(backends: Backends, password: Option<SecretString>) {
    let (password, random) = match password {
        Some(password) if !password.expose_secret().trim().is_empty() => {
            (password.expose_secret().to_owned(), false)
        }
        _ => (random_password(), true),
    };
    let mut pause = Duration::from_millis(200);
    loop {
        let request = CreateUserRequest {
            user_id: FIRST_USER.to_owned(),
            password: Some(password.clone()),
            daily_limit: None,
            rate_limit_per_minute: None,
        };
        let created = backends
            .accounts(request, |mut client, request| async move {
                client.bootstrap(request).await
            })
            .await;
        match created {
            Ok(answer) if answer.created && random => {
                tracing::warn!(
                    user_id = FIRST_USER,
                    password = %password,
                    "created the first user with a random password; log in with it and keep it (find this line with: docker compose logs gateway | grep 'first user')"
                );
                return;
            }
            Ok(answer) => {
                if answer.created {
                    tracing::info!(
                        user_id = FIRST_USER,
                        "created the first user with ADMIN_PASSWORD"
                    );
                }
                return;
            }
            Err(ApiError::InvalidField(detail)) => {
                tracing::error!(%detail, "cannot create the first user: ADMIN_PASSWORD is not acceptable");
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "accounts not reachable yet; retrying the first-user check");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// 20 letters and digits from the thread's CSPRNG: about 119 bits.
fn random_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 20)
}

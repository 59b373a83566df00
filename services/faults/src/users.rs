//! The simulated users: each made through the admin API with an API key, as a deployment
//! makes them, and a daily limit no run reaches.

use chat_testing::accounts;

use crate::client::Caller;

/// Makes `user_id` and a key for it through `gateway`'s admin API.
pub async fn make_user(
    http: &reqwest::Client,
    gateway: &str,
    admin_key: &str,
    user_id: &str,
) -> anyhow::Result<Caller> {
    let key = accounts::make_user(http, gateway, admin_key, user_id, "faults").await?;
    Ok(Caller {
        gateway: gateway.to_owned(),
        user_id: user_id.to_owned(),
        key,
    })
}

/// A fresh secret for the admin API of this run only.
pub fn random_admin_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

//! The simulated users: each made through the admin API with an API key, as a deployment
//! makes them, and a daily limit no run reaches.

use crate::client::Caller;

/// Tokens each user may spend per day: far more than the suite spends.
const DAILY_LIMIT: i64 = 1_000_000_000_000;

/// Makes `user_id` and a key for it through `gateway`'s admin API.
pub async fn make_user(
    http: &reqwest::Client,
    gateway: &str,
    admin_key: &str,
    user_id: &str,
) -> anyhow::Result<Caller> {
    let created = http
        .post(format!("{gateway}/admin/users"))
        .bearer_auth(admin_key)
        .json(&serde_json::json!({"user_id": user_id, "daily_limit": DAILY_LIMIT}))
        .send()
        .await?;
    anyhow::ensure!(
        created.status() == reqwest::StatusCode::CREATED,
        "POST /admin/users: {}",
        created.status()
    );
    let key = http
        .post(format!("{gateway}/admin/users/{user_id}/keys"))
        .bearer_auth(admin_key)
        .json(&serde_json::json!({"name": "faults"}))
        .send()
        .await?;
    anyhow::ensure!(
        key.status() == reqwest::StatusCode::CREATED,
        "POST /admin/users/{user_id}/keys: {}",
        key.status()
    );
    let body: serde_json::Value = key.json().await?;
    let key = body["key"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("POST /admin/users/{user_id}/keys: no key"))?;
    Ok(Caller {
        gateway: gateway.to_owned(),
        user_id: user_id.to_owned(),
        key: key.to_owned(),
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

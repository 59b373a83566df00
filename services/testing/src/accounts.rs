//! Users made as a deployment makes them: through the gateway's admin API, each with a
//! daily limit no run reaches and an API key. The benchmark, the soak and `make faults`
//! all load the stack as such users.

/// Tokens each user may spend per day: far more than any run spends.
pub const DAILY_LIMIT: i64 = 1_000_000_000_000;

/// Makes `user_id` through `gateway`'s admin API, and a key for it named `key_name`:
/// the key.
pub async fn make_user(
    http: &reqwest::Client,
    gateway: &str,
    admin_key: &str,
    user_id: &str,
    key_name: &str,
) -> anyhow::Result<String> {
    let limits = serde_json::json!({"daily_limit": DAILY_LIMIT});
    make_user_with(http, gateway, admin_key, user_id, limits, key_name).await
}

/// As [`make_user`], with the user's fields (`daily_limit`, `rate_limit_per_minute`, ...)
/// from `fields`, a JSON object.
pub async fn make_user_with(
    http: &reqwest::Client,
    gateway: &str,
    admin_key: &str,
    user_id: &str,
    fields: serde_json::Value,
    key_name: &str,
) -> anyhow::Result<String> {
    let mut user = serde_json::json!({"user_id": user_id});
    if let (serde_json::Value::Object(user), serde_json::Value::Object(fields)) =
        (&mut user, fields)
    {
        user.extend(fields);
    }
    let created = http
        .post(format!("{gateway}/admin/users"))
        .bearer_auth(admin_key)
        .json(&user)
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
        .json(&serde_json::json!({"name": key_name}))
        .send()
        .await?;
    anyhow::ensure!(
        key.status() == reqwest::StatusCode::CREATED,
        "POST /admin/users/{user_id}/keys: {}",
        key.status()
    );
    let body: serde_json::Value = key.json().await?;
    body["key"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("POST /admin/users/{user_id}/keys: no key"))
}

//! `chat-gateway admin ...`: the admin API's operations from the command line, for
//! operators inside the container (`docker compose exec gateway chat-gateway admin ...`).
//! It talks to the accounts service directly, so it needs no ADMIN_API_KEY, only the
//! container's own network. Answers are the admin API's JSON, one object per line.

use std::io::BufRead;

use serde_json::{Value, json};

use crate::admin::{self, UserFields, created_key_json, key_json, user_json};
use crate::{Backends, Settings};

pub const USAGE: &str = "\
usage: chat-gateway admin <command>
  user create <user_id> [--password P | --password -] [--daily-limit N] [--rate-limit N]
  user show <user_id>
  user update <user_id> [--password P | --password -] [--daily-limit N] [--rate-limit N] [--disable | --enable]
  key create <user_id> [--name NAME]
  key list <user_id>
  key revoke <key_id>
--password - reads the password from the first line of standard input (keeps it out of
the shell history and the process list). A limit of 0 clears the user's override.";

/// Whether the process was started as `chat-gateway admin ...`.
pub fn requested() -> Option<Vec<String>> {
    let mut args = std::env::args().skip(1);
    (args.next().as_deref() == Some("admin")).then(|| args.collect())
}

/// Runs one command and prints its answer.
#[allow(clippy::print_stdout)]
pub async fn run(settings: &Settings, args: Vec<String>) -> anyhow::Result<()> {
    let backends = Backends::connect(settings)?;
    match dispatch(&backends, &args).await {
        Ok(answer) => {
            println!("{answer}");
            Ok(())
        }
        // The admin API's words: `not found: no user "bob"`.
        Err(error) => match error.downcast_ref::<crate::ApiError>() {
            Some(refused) => {
                let detail = refused.body()["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                Err(anyhow::anyhow!("{refused}: {detail}"))
            }
            None => Err(error),
        },
    }
}

async fn dispatch(backends: &Backends, args: &[String]) -> anyhow::Result<Value> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let answer = match words.as_slice() {
        ["user", "create", user_id, options @ ..] => {
            let mut fields = user_fields(options)?;
            fields.user_id = Some((*user_id).to_owned());
            user_json(&admin::create_user(backends, fields).await?)
        }
        ["user", "show", user_id] => {
            user_json(&admin::get_user(backends, (*user_id).to_owned()).await?)
        }
        ["user", "update", user_id, options @ ..] => {
            let fields = user_fields(options)?;
            user_json(&admin::update_user(backends, (*user_id).to_owned(), fields).await?)
        }
        ["key", "create", user_id, options @ ..] => {
            let name = match options {
                [] => String::new(),
                ["--name", name] => (*name).to_owned(),
                _ => anyhow::bail!("{USAGE}"),
            };
            created_key_json(&admin::create_key(backends, (*user_id).to_owned(), name).await?)
        }
        ["key", "list", user_id] => {
            let keys = admin::list_keys(backends, (*user_id).to_owned()).await?;
            json!({ "keys": keys.iter().map(key_json).collect::<Vec<_>>() })
        }
        ["key", "revoke", key_id] => {
            admin::revoke_key(backends, (*key_id).to_owned()).await?;
            json!({ "revoked": key_id })
        }
        _ => anyhow::bail!("{USAGE}"),
    };
    Ok(answer)
}

fn user_fields(options: &[&str]) -> anyhow::Result<UserFields> {
    let mut fields = UserFields::default();
    let mut options = options.iter();
    while let Some(option) = options.next() {
        let mut value = || {
            options
                .next()
                .copied()
                .ok_or_else(|| anyhow::anyhow!("{option} needs a value"))
        };
        match *option {
            "--password" => fields.password = Some(password(value()?)?),
            "--daily-limit" => fields.daily_limit = Some(value()?.parse()?),
            "--rate-limit" => fields.rate_limit_per_minute = Some(value()?.parse()?),
            "--disable" => fields.disabled = Some(true),
            "--enable" => fields.disabled = Some(false),
            _ => anyhow::bail!("{USAGE}"),
        }
    }
    Ok(fields)
}

fn password(value: &str) -> anyhow::Result<String> {
    if value != "-" {
        return Ok(value.to_owned());
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

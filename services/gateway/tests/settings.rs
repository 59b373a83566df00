//! The shipped example settings file is valid for every service.

const EXAMPLE: &str = include_str!("../../../deploy/config/example.toml");

#[test]
fn the_example_settings_file_loads_in_every_service() -> anyhow::Result<()> {
    use chat_common::settings::from_toml;
    let gateway: chat_gateway::Settings = from_toml(EXAMPLE)?;
    assert_eq!(gateway.rate_limit_per_minute, 30);
    let filter: chat_filter::Settings = from_toml(EXAMPLE)?;
    assert_eq!(filter.blocked_words, ["foo", "敏感词", "some phrase"]);
    let token: chat_token::Settings = from_toml(EXAMPLE)?;
    assert_eq!(token.quota_timezone, "Asia/Shanghai");
    chat_token::Quota::new(&token)?;
    let llm: chat_llm::Settings = from_toml(EXAMPLE)?;
    assert_eq!(llm.openai_model, "gpt-4o-mini");
    let history: chat_history::Settings = from_toml(EXAMPLE)?;
    assert_eq!(history.history_cache_size, 40);
    let keyword: chat_keyword::Settings = from_toml(EXAMPLE)?;
    assert_eq!(keyword.keyword_listen, "0.0.0.0:50053");
    assert_eq!(gateway.retrieval, chat_gateway::Switch::On);
    Ok(())
}

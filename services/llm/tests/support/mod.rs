//! What the LLM service's tests share: the service pointed at a local server speaking
//! OpenAI's wire format.

use chat_llm::{Llm, Settings};
use chat_testing::FakeOpenAi;

/// The service on the OpenAI provider, calling `fake`, with short retry pauses.
pub fn llm(fake: &FakeOpenAi) -> anyhow::Result<Llm> {
    Llm::new(&Settings {
        openai_api_key: Some("sk-test-key-0123456789".to_owned().into()),
        openai_base_url: fake.base_url.clone(),
        openai_model: "gpt-test".into(),
        llm_retry_base_ms: 10,
        ..Settings::default()
    })
}

//! The conversation sent to the model, and what it costs. Pure: no I/O.

use chat_common::tokens;
use chat_proto::{ChatMessage, Role, StoredMessage};

use super::Policy;
use super::reservation::Estimate;

/// The messages sent to the model and what they cost, overhead included.
#[derive(Debug)]
pub struct Prompt {
    pub messages: Vec<ChatMessage>,
    pub tokens: i64,
}

impl Prompt {
    /// The system prompt, as many of the latest earlier turns as fit the token budget
    /// (oldest dropped first), then the new message.
    pub fn build(policy: &Policy, earlier: &[StoredMessage], cleaned: &str) -> Self {
        let kept = latest_that_fit(earlier, policy.context_tokens);
        let mut total =
            tokens::REPLY_PRIMING + tokens::count(cleaned) + tokens::PER_MESSAGE_OVERHEAD;
        total += kept.iter().map(|(_, cost)| cost).sum::<usize>();
        let system = (!policy.system_prompt.is_empty()).then(|| {
            total += tokens::count(&policy.system_prompt) + tokens::PER_MESSAGE_OVERHEAD;
            ChatMessage {
                role: Role::System.into(),
                content: policy.system_prompt.clone(),
                ..ChatMessage::default()
            }
        });
        let messages = system
            .into_iter()
            .chain(kept.into_iter().rev().map(|(message, _)| ChatMessage {
                role: message.role,
                content: message.text.clone(),
                ..ChatMessage::default()
            }))
            .chain(std::iter::once(ChatMessage {
                role: Role::User.into(),
                content: cleaned.to_owned(),
                ..ChatMessage::default()
            }))
            .collect();
        Self {
            messages,
            tokens: total as i64,
        }
    }

    /// Puts retrieved context (a block and its cost in tokens) in the prompt as a system
    /// message of its own, after the system prompt and before the conversation, marked
    /// as retrieved so the model does not take it for the user's words or instructions.
    pub fn with_retrieved(mut self, retrieved: Option<(String, usize)>) -> Self {
        let Some((block, cost)) = retrieved else {
            return self;
        };
        let at = self
            .messages
            .iter()
            .take_while(|message| message.role() == Role::System)
            .count();
        self.messages.insert(
            at,
            ChatMessage {
                role: Role::System.into(),
                content: block,
                ..ChatMessage::default()
            },
        );
        self.tokens += cost as i64;
        self
    }

    /// What to reserve before the call: the prompt plus the most the reply may cost,
    /// and never less than the policy's floor (the token service scales the prompt's
    /// part by the model's calibration).
    pub fn reservation(&self, policy: &Policy) -> Estimate {
        Estimate {
            model: policy.model.clone(),
            prompt_tokens: self.tokens,
            output_tokens: i64::from(policy.max_output_tokens),
            floor: policy.min_reservation,
        }
    }
}

/// The latest messages within `budget` tokens, newest first, each with its cost, so
/// every text is tokenized once.
fn latest_that_fit(earlier: &[StoredMessage], mut budget: usize) -> Vec<(&StoredMessage, usize)> {
    let mut kept = Vec::new();
    for message in earlier.iter().rev() {
        let cost = tokens::count(&message.text) + tokens::PER_MESSAGE_OVERHEAD;
        if cost > budget {
            break;
        }
        budget -= cost;
        kept.push((message, cost));
    }
    // A conversation the model sees should open with the user, not a dangling reply.
    while kept
        .last()
        .is_some_and(|(message, _)| message.role() == Role::Assistant)
    {
        kept.pop();
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(role: Role, text: &str) -> StoredMessage {
        StoredMessage {
            role: role.into(),
            text: text.to_owned(),
            ..StoredMessage::default()
        }
    }

    fn policy(context_tokens: usize, system_prompt: &str) -> Policy {
        Policy {
            context_messages: 20,
            context_tokens,
            max_output_tokens: 100,
            min_reservation: 200,
            system_prompt: system_prompt.to_owned(),
            retrieval_tokens: 300,
            retrieval_scope: crate::RetrievalScope::User,
            model: "gpt-test".to_owned(),
        }
    }

    #[test]
    fn retrieved_context_goes_after_the_system_prompt_and_is_charged() {
        let earlier = [stored(Role::User, "hello"), stored(Role::Assistant, "hi")];
        for (system, at) in [("Be brief.", 1), ("", 0)] {
            let plain = Prompt::build(&policy(1000, system), &earlier, "and now?");
            let tokens = plain.tokens;
            let with = plain.with_retrieved(Some(("retrieved: my dog is Biscuit".to_owned(), 9)));
            assert_eq!(with.messages[at].role(), Role::System);
            assert_eq!(with.messages[at].content, "retrieved: my dog is Biscuit");
            assert_eq!(
                with.messages.len(),
                earlier.len() + 2 + usize::from(at == 1)
            );
            assert_eq!(with.tokens, tokens + 9);
            assert_eq!(
                with.messages.last().map(|message| message.content.as_str()),
                Some("and now?")
            );
        }
        let plain = Prompt::build(&policy(1000, ""), &earlier, "and now?");
        let count = plain.messages.len();
        assert_eq!(plain.with_retrieved(None).messages.len(), count);
    }

    fn contents(prompt: &Prompt) -> Vec<&str> {
        prompt.messages.iter().map(|m| m.content.as_str()).collect()
    }

    #[test]
    fn the_prompt_keeps_the_latest_turns_that_fit() {
        let earlier = [
            stored(Role::User, "one two three four five six seven eight"),
            stored(Role::Assistant, "first reply"),
            stored(Role::User, "second question"),
            stored(Role::Assistant, "second reply"),
        ];
        let all = Prompt::build(&policy(1000, "be brief"), &earlier, "now");
        assert_eq!(
            all.tokens,
            tokens::count_prompt(contents(&all)) as i64,
            "counted once, counted right"
        );
        assert_eq!(
            contents(&all),
            [
                "be brief",
                "one two three four five six seven eight",
                "first reply",
                "second question",
                "second reply",
                "now"
            ]
        );
        assert_eq!(all.messages[0].role(), Role::System);

        // A small budget drops the oldest turns, and never opens on an assistant reply.
        let some = Prompt::build(&policy(12, ""), &earlier, "now");
        assert_eq!(contents(&some), ["second question", "second reply", "now"]);

        let none = Prompt::build(&policy(0, ""), &earlier, "now");
        assert_eq!(none.messages.len(), 1);
    }

    #[test]
    fn the_reservation_covers_the_prompt_and_the_output_cap_above_a_floor() {
        let small = Prompt::build(&policy(0, ""), &[], "hi");
        let estimate = small.reservation(&policy(0, ""));
        assert_eq!(estimate.tokens(), 200, "the floor");
        assert_eq!(
            (estimate.prompt_tokens, estimate.output_tokens),
            (small.tokens, 100),
            "the parts, for the token service to calibrate"
        );
        assert_eq!(estimate.model, "gpt-test");
        let long_text = "word ".repeat(400);
        let long = Prompt::build(&policy(0, ""), &[], &long_text);
        assert_eq!(long.reservation(&policy(0, "")).tokens(), long.tokens + 100);
    }
}

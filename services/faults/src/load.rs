//! The load while a fault runs: one client per conversation chatting turn after turn,
//! the probe that waits for the stack to serve again, and what the chats under way when
//! the fault hit answered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::client::{Answer, Caller, Outcome, Route};
use crate::faults::Fault;
use crate::{BACK_OFF, HEALTHY_WITHIN, Options, World};

/// The clients of one fault's load: each in a conversation of its own, by one route;
/// the probe is the last client.
pub(crate) struct Load {
    /// Each client's caller and conversation, the probe's included.
    pub(crate) conversations: BTreeMap<usize, (Caller, String)>,
    routes: BTreeMap<usize, Route>,
    pub(crate) probe_client: usize,
    pub(crate) probe_conversation: String,
}

impl Load {
    /// `options.clients_per_user` clients for each user, by turns on `/chat`,
    /// `/chat/stream` and `/v1`, each in a new conversation, and the probe.
    pub(crate) async fn plan(
        world: &World,
        options: &Options,
        fault: Fault,
    ) -> anyhow::Result<Self> {
        let mut conversations = BTreeMap::new();
        let mut routes = BTreeMap::new();
        let mut client = 0;
        for caller in &world.callers {
            for index in 0..options.clients_per_user {
                let route = [Route::Chat, Route::Stream, Route::V1][index % 3];
                let conversation = match route {
                    Route::V1 => format!("faults-{}-c{client}", fault.slug()),
                    Route::Chat | Route::Stream => new_conversation(world, caller, fault).await?,
                };
                conversations.insert(client, (caller.clone(), conversation));
                routes.insert(client, route);
                client += 1;
            }
        }
        let probe_client = client;
        let probe_conversation = new_conversation(world, &world.probe, fault).await?;
        conversations.insert(
            probe_client,
            (world.probe.clone(), probe_conversation.clone()),
        );
        Ok(Self {
            conversations,
            routes,
            probe_client,
            probe_conversation,
        })
    }

    /// Every client but the probe, chatting until `stop`.
    pub(crate) fn start(
        &self,
        world: &World,
        fault: Fault,
        stop: &Arc<AtomicBool>,
    ) -> Vec<JoinHandle<Vec<Answer>>> {
        self.conversations
            .iter()
            .filter(|(client, _)| **client != self.probe_client)
            .map(|(client, (caller, conversation))| {
                tokio::spawn(client_loop(
                    world.http.clone(),
                    caller.clone(),
                    *client,
                    self.routes.get(client).copied().unwrap_or(Route::Chat),
                    conversation.clone(),
                    fault.slug(),
                    stop.clone(),
                ))
            })
            .collect()
    }
}

/// A new conversation for `caller`, retried for a while: the last fault may still be
/// healing (that it takes long is the next fault's first note).
pub(crate) async fn new_conversation(
    world: &World,
    caller: &Caller,
    fault: Fault,
) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        match caller.new_conversation(&world.http, fault.slug()).await {
            Ok(id) => return Ok(id),
            Err(error) if started.elapsed() > HEALTHY_WITHIN => {
                return Err(error.context(format!(
                    "no conversation could be made within {HEALTHY_WITHIN:?}"
                )));
            }
            Err(_) => tokio::time::sleep(BACK_OFF).await,
        }
    }
}

/// One client: chats in its conversation, one after another, until told to stop.
async fn client_loop(
    http: reqwest::Client,
    caller: Caller,
    client: usize,
    route: Route,
    conversation: String,
    slug: &'static str,
    stop: Arc<AtomicBool>,
) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut seq = 0;
    while !stop.load(Ordering::SeqCst) {
        let answer = one_chat(&http, &caller, client, seq, route, &conversation, slug).await;
        let failed = !matches!(answer.outcome, Outcome::Ok { .. });
        answers.push(answer);
        seq += 1;
        if failed {
            tokio::time::sleep(BACK_OFF).await;
        }
    }
    answers
}

async fn one_chat(
    http: &reqwest::Client,
    caller: &Caller,
    client: usize,
    seq: usize,
    route: Route,
    conversation: &str,
    slug: &str,
) -> Answer {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let text = format!(
        "{slug} client {client} turn {seq} {} keep this turn",
        nonce.get(..8).unwrap_or_default()
    );
    let sent_at = Instant::now();
    let (latency, outcome) = caller.chat(http, route, conversation, &text).await;
    Answer {
        client,
        seq,
        user_id: caller.user_id.clone(),
        conversation_id: conversation.to_owned(),
        route,
        text,
        sent_at,
        latency,
        outcome,
    }
}

/// What the chats in flight when the fault began, and those sent while it lasted,
/// answered: the evidence that the fault hit work under way.
pub(crate) fn during(answers: &[Answer], began: Instant, ended: Instant) -> String {
    let in_flight: Vec<&Answer> = answers
        .iter()
        .filter(|answer| answer.sent_at <= began && answer.sent_at + answer.latency > began)
        .collect();
    let streams = in_flight
        .iter()
        .filter(|answer| answer.route == Route::Stream)
        .count();
    let in_flight_ok = in_flight
        .iter()
        .filter(|answer| matches!(answer.outcome, Outcome::Ok { .. }))
        .count();
    let meanwhile: Vec<&Answer> = answers
        .iter()
        .filter(|answer| answer.sent_at > began && answer.sent_at < ended)
        .collect();
    let meanwhile_ok = meanwhile
        .iter()
        .filter(|answer| matches!(answer.outcome, Outcome::Ok { .. }))
        .count();
    format!(
        "{} chats in flight when it began ({streams} streams), {in_flight_ok} of them answered ok; \
         {} sent during the fault ({:.1} s), {meanwhile_ok} ok",
        in_flight.len(),
        meanwhile.len(),
        ended.duration_since(began).as_secs_f64()
    )
}

/// Probe chats until one is answered and saved and the conversation reads back, for at
/// most `within`: how long that took, and the probes' answers (checked as any other
/// client's). A probe under way when the time is up is let finish (a chat cut off by
/// its client is still charged, and must be counted), but it does not count.
pub(crate) async fn probe_until_saved(
    world: &World,
    conversation: &str,
    within: Duration,
    client: usize,
) -> (Option<Duration>, Vec<Answer>) {
    let started = Instant::now();
    let mut answers = Vec::new();
    let mut seq = 0;
    while started.elapsed() < within {
        let answer = one_chat(
            &world.http,
            &world.probe,
            client,
            seq,
            Route::Chat,
            conversation,
            "probe",
        )
        .await;
        seq += 1;
        let saved = answer.acknowledged();
        answers.push(answer);
        // Serving normally: the chat is saved, and the conversation can be read back.
        if saved
            && world
                .probe
                .messages(&world.http, conversation)
                .await
                .is_ok()
        {
            let took = started.elapsed();
            return ((took <= within).then_some(took), answers);
        }
        tokio::time::sleep(BACK_OFF).await;
    }
    (None, answers)
}

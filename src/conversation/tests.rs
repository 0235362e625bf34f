//! The conversation service's fast tier: a fake brain (keyword intents, no encoder), the real
//! policy and prompts, a real SQLite store. Turns, feedback, claim, agent reply and resolve,
//! each checked against what the database holds afterwards.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::dialogue::{Knowledge, KnownAnswer, Understanding};
use crate::faq::{Filled, Filler};
use crate::nlu::Prediction;
use crate::store::StoreOptions;

struct FakeBrain {
    policy: Policy,
    filler: Filler,
    /// When set, `understand` answers like a full NLU queue.
    busy: AtomicBool,
    /// The joined texts `understand` was asked to read beside each message.
    joined: std::sync::Mutex<Vec<Option<String>>>,
}

fn prompts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("prompts")
}

fn prediction(label: &str, confidence: f32, labels: &[&str]) -> Prediction {
    Prediction {
        label: label.into(),
        confidence,
        out_of_scope: false,
        probs: labels
            .iter()
            .map(|l| {
                let p = if *l == label {
                    confidence
                } else {
                    (1.0 - confidence) / (labels.len() - 1) as f32
                };
                (l.to_string(), p)
            })
            .collect(),
    }
}

/// Keyword NLU: enough to drive the policy's rules.
fn classify(text: &str) -> Classification {
    let t = text.to_lowercase();
    let intent = if t.contains("person") || t.contains("human") {
        "contact_human_agent"
    } else if t.contains("order") {
        "track_order"
    } else if t.contains("pay") {
        "check_payment_methods"
    } else {
        "complaint"
    };
    let sentiment = if t.contains("furious") || t.contains("!!!") {
        prediction("negative", 0.95, &["negative", "neutral", "positive"])
    } else {
        prediction("neutral", 0.8, &["negative", "neutral", "positive"])
    };
    Classification {
        intent: Some(prediction(intent, 0.9, &[intent, "other"])),
        sentiment: Some(sentiment),
        embedding: None,
        queue_ms: 0.0,
        compute_ms: 0.0,
    }
}

struct NoFaq<'a>(&'a Filler);

impl Knowledge for NoFaq<'_> {
    fn answer(&self, _text: &str, _intent: Option<&str>) -> Option<KnownAnswer> {
        None
    }
    fn intent_template(&self, intent: &str) -> Option<String> {
        self.0.intent_template(intent).map(String::from)
    }
    fn ask_for(&self, slot: &str) -> Option<String> {
        self.0.texts().ask.get(slot).cloned()
    }
    fn fill(&self, template: &str, slots: &BTreeMap<String, String>) -> Filled {
        self.0.fill(template, slots)
    }
}

impl Brain for FakeBrain {
    fn understand(
        &self,
        text: String,
        joined: Option<String>,
        language: Option<String>,
    ) -> BoxFuture<'static, Result<Read, NluError>> {
        let busy = self.busy.load(Ordering::Relaxed);
        self.joined.lock().expect("lock").push(joined.clone());
        Box::pin(async move {
            if busy {
                return Err(NluError::Overloaded);
            }
            Ok(Read {
                own: classify(&text),
                joined: joined.map(|j| {
                    let c = classify(&j);
                    (j, c)
                }),
                language,
                multilingual: false,
            })
        })
    }

    fn decide(
        &self,
        state: &mut State,
        text: &str,
        read: &Read,
        _customer_id: Option<&str>,
    ) -> TurnResult {
        let cls = &read.own;
        let u = Understanding {
            text: text.into(),
            intent: cls.intent.as_ref().map(|p| p.label.clone()),
            intent_confidence: 0.9,
            sentiment: cls.sentiment.as_ref().map(|p| p.label.clone()),
            sentiment_score: cls.sentiment.as_ref().map_or(0.0, |p| p.confidence),
            anger: crate::nlu::anger::anger(text, super::negativity(cls).unwrap_or(0.0)),
            slots: crate::nlu::slots::SlotExtractor::default().extract(text),
            product: None,
            query: None,
        };
        let decision = self.policy.turn(state, &u, &NoFaq(&self.filler));
        TurnResult {
            intent: intent_label(cls),
            decision,
            understanding: u,
            products: Vec::new(),
        }
    }

    fn redact_for_storage(&self, text: &str) -> String {
        text.replace("4111 1111 1111 1111", "[card]")
    }

    fn redact_for_log(&self, text: &str) -> String {
        text.into()
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn escalation_text(&self, _state: &State) -> String {
        "A person will take over.".into()
    }
}

async fn setup() -> (tempfile::TempDir, Service, Arc<dyn Brain>, Arc<FakeBrain>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = Store::connect(&StoreOptions::new(url))
        .await
        .expect("store");
    let fake = Arc::new(FakeBrain {
        policy: Policy::load(&prompts(), "en").expect("policy"),
        filler: Filler::load(&prompts(), "en").expect("filler"),
        busy: AtomicBool::new(false),
        joined: Default::default(),
    });
    let brain: Arc<dyn Brain> = fake.clone();
    (dir, Service::new(store), brain, fake)
}

fn reply_id(f: &ServerFrame) -> String {
    match f {
        ServerFrame::Reply { id, .. } | ServerFrame::Ack { id, .. } => id.clone(),
        other => panic!("expected reply or ack, got {other:?}"),
    }
}

#[tokio::test]
async fn a_turn_stores_both_messages_and_replies_with_what_was_stored() {
    let (_d, svc, brain, _) = setup().await;
    let c = svc.open(None, Some("c1"), "en", 10).await.expect("open");
    let id = c.conversation.id.clone();
    let out = svc
        .turn(
            &brain,
            &id,
            Some("c1"),
            Some("m1".into()),
            "where is my order".into(),
        )
        .await
        .expect("turn");
    let rid = reply_id(&out.frame);
    let stored = svc.store.messages(&id, 10).await.expect("messages");
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].role, Role::Shopper);
    assert_eq!(stored[0].client_id.as_deref(), Some("m1"));
    assert_eq!(stored[1].id, rid, "the reply sent is the reply stored");
    assert_eq!(stored[1].reply_to.as_deref(), Some(stored[0].id.as_str()));
    // The policy asked for the order number and remembers that it did.
    let st = parse_state(
        &svc.store
            .conversation(&id)
            .await
            .expect("read")
            .expect("c")
            .state,
    );
    assert!(st.pending.is_some(), "{st:?}");
    // Card numbers never reach the transcript.
    svc.turn(
        &brain,
        &id,
        None,
        None,
        "my card 4111 1111 1111 1111".into(),
    )
    .await
    .expect("turn");
    let all = svc.store.messages(&id, 10).await.expect("messages");
    assert!(all.iter().all(|m| !m.text.contains("4111")));
}

#[tokio::test]
async fn a_follow_up_is_read_with_its_topic_in_the_same_nlu_call() {
    let (_d, svc, brain, fake) = setup().await;
    let c = svc.open(None, Some("c1"), "en", 10).await.expect("open");
    let id = c.conversation.id.clone();
    for text in ["can i pay with paypal", "and with a gift card?"] {
        svc.turn(&brain, &id, None, None, text.into())
            .await
            .expect("turn");
    }
    let joined = fake.joined.lock().expect("lock").clone();
    assert_eq!(
        joined,
        vec![
            None,
            Some("can i pay with paypal and with a gift card?".to_string())
        ]
    );
}

#[tokio::test]
async fn a_failed_write_yields_an_error_and_no_reply_and_the_store_recovers() {
    let (_d, svc, brain, _) = setup().await;
    let c = svc.open(None, None, "en", 10).await.expect("open");
    let id = c.conversation.id.clone();
    // A turn for a conversation that does not exist: the write fails inside the transaction.
    let e = svc
        .turn(
            &brain,
            "no-such-conversation",
            None,
            None,
            "hello order".into(),
        )
        .await
        .expect_err("no conversation");
    assert!(matches!(e, ConversationError::NotFound(_)), "{e:?}");
    // The writer is usable afterwards, and nothing half-written remains.
    svc.turn(&brain, &id, None, None, "where is my order".into())
        .await
        .expect("the next turn commits");
    assert_eq!(svc.store.messages(&id, 10).await.expect("read").len(), 2);
    assert!(svc.store.check_writable().await.ok);
}

#[tokio::test]
async fn a_busy_nlu_is_reported_as_busy_and_nothing_is_stored() {
    let (_d, svc, brain, fake) = setup().await;
    let c = svc.open(None, None, "en", 10).await.expect("open");
    fake.busy.store(true, Ordering::Relaxed);
    let e = svc
        .turn(&brain, &c.conversation.id, None, None, "hello".into())
        .await
        .expect_err("busy");
    assert!(matches!(e, ConversationError::Busy));
    assert!(svc
        .store
        .messages(&c.conversation.id, 10)
        .await
        .expect("read")
        .is_empty());
}

#[tokio::test]
async fn escalation_claim_reply_resolve_each_commit_with_their_state_and_events() {
    let (_d, svc, brain, _) = setup().await;
    let mut agent_events = svc.live.agent_events();
    let c = svc.open(None, Some("c9"), "en", 10).await.expect("open");
    let id = c.conversation.id.clone();
    let (entry, mut frames) = svc.subscribe(&id);
    let out = svc
        .turn(
            &brain,
            &id,
            None,
            None,
            "I want a person now, I am furious!!!".into(),
        )
        .await
        .expect("turn");
    assert!(out.escalated.is_some());
    let ev = agent_events.recv().await.expect("event");
    let AgentEvent::Escalated { escalation } = ev else {
        panic!("expected an escalation event, got {ev:?}")
    };
    // The escalation records P(negative) of the message, not the winning label's confidence.
    assert!((escalation.sentiment_score.expect("score") - 0.95).abs() < 1e-6);

    // Only one of two agents wins the claim.
    let (a, b) = tokio::join!(
        svc.claim(&brain, &escalation.id, "alex"),
        svc.claim(&brain, &escalation.id, "sam")
    );
    assert!(a.is_ok() ^ b.is_ok(), "exactly one claim wins: {a:?} {b:?}");
    let winner = if a.is_ok() { "alex" } else { "sam" };
    let loser = if a.is_ok() { "sam" } else { "alex" };
    let conv = svc.store.conversation(&id).await.expect("read").expect("c");
    assert_eq!(
        conv.status,
        ConversationStatus::Claimed,
        "claim and state in one transaction"
    );
    assert!(matches!(
        frames.recv().await,
        Ok(ServerFrame::AgentJoined { .. })
    ));

    // Only the claimer may reply or resolve.
    let e = svc
        .agent_reply(&escalation.id, loser, "hi")
        .await
        .expect_err("not theirs");
    assert!(matches!(e, ConversationError::Conflict(_)), "{e:?}");
    let e = svc
        .resolve(&brain, &escalation.id, loser)
        .await
        .expect_err("not theirs");
    assert!(matches!(e, ConversationError::Conflict(_)), "{e:?}");
    let m = svc
        .agent_reply(&escalation.id, winner, "Hi, I'm on it.")
        .await
        .expect("reply");
    assert_eq!(m.role, Role::Agent);
    assert!(matches!(
        frames.recv().await,
        Ok(ServerFrame::AgentMessage { .. })
    ));

    // While claimed the bot is silent: the shopper's message is acknowledged, not answered.
    let out = svc
        .turn(&brain, &id, None, Some("s2".into()), "thanks".into())
        .await
        .expect("turn");
    assert!(
        matches!(out.frame, ServerFrame::Ack { .. }),
        "{:?}",
        out.frame
    );

    let done = svc
        .resolve(&brain, &escalation.id, winner)
        .await
        .expect("resolve");
    assert_eq!(done.status, EscalationStatus::Resolved);
    let conv = svc.store.conversation(&id).await.expect("read").expect("c");
    assert_eq!(conv.status, ConversationStatus::Resolved);
    assert!(matches!(frames.recv().await, Ok(ServerFrame::Resolved)));
    svc.unsubscribe(&id, entry, frames);
}

#[tokio::test]
async fn unhelpful_feedback_escalates_in_one_transaction() {
    let (_d, svc, brain, _) = setup().await;
    let c = svc.open(None, None, "en", 10).await.expect("open");
    let id = c.conversation.id.clone();
    let mut escalated = None;
    for _ in 0..3 {
        let out = svc
            .turn(&brain, &id, None, None, "can i pay with paypal".into())
            .await
            .expect("turn");
        let rid = reply_id(&out.frame);
        if let Some(x) = svc
            .feedback(&brain, &id, &rid, false)
            .await
            .expect("feedback")
        {
            escalated = Some(x);
            break;
        }
    }
    let (frame, reason) = escalated.expect("escalated after unhelpful replies");
    assert_eq!(reason, EscalationReason::Unhelpful);
    let rid = reply_id(&frame);
    let m = svc
        .store
        .message(&rid)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(m.text, "A person will take over.");
    assert!(svc
        .store
        .open_escalation(&id)
        .await
        .expect("read")
        .is_some());
    // Feedback on another conversation's message is refused.
    let other = svc.open(None, None, "en", 10).await.expect("open");
    let e = svc
        .feedback(&brain, &other.conversation.id, &rid, true)
        .await
        .expect_err("not this conversation");
    assert!(matches!(e, ConversationError::BadRequest(_)));
}

#[tokio::test]
async fn notes_reach_agents_only_in_one_transaction() {
    let (_d, svc, brain, _) = setup().await;
    let mut agent_events = svc.live.agent_events();
    let c = svc.open(None, Some("c11"), "en", 10).await.expect("open");
    let id = c.conversation.id.clone();
    let (_entry, mut frames) = svc.subscribe(&id);
    svc.turn(
        &brain,
        &id,
        None,
        None,
        "I want a person now, I am furious!!!".into(),
    )
    .await
    .expect("turn");
    let AgentEvent::Escalated { escalation } = agent_events.recv().await.expect("event") else {
        panic!("expected an escalation event")
    };
    while frames.try_recv().is_ok() {}
    // Bad notes are refused before anything is written.
    let long = "x".repeat(MAX_NOTE_CHARS + 1);
    for bad in ["", "   ", long.as_str()] {
        assert!(matches!(
            svc.add_note(&escalation.id, "alex", bad).await,
            Err(ConversationError::BadRequest(_))
        ));
    }
    assert!(matches!(
        svc.add_note("nope", "alex", "hi").await,
        Err(ConversationError::NotFound(_))
    ));
    let n = svc
        .add_note(&escalation.id, "alex", "  refund approved  ")
        .await
        .expect("note");
    assert_eq!(n.text, "refund approved");
    assert_eq!(svc.store.notes(&id).await.expect("notes"), vec![n.clone()]);
    let mut saw_note = false;
    while let Ok(ev) = agent_events.try_recv() {
        if let AgentEvent::Note {
            note,
            escalation_id,
        } = ev
        {
            assert_eq!((note, escalation_id), (n.clone(), escalation.id.clone()));
            saw_note = true;
        }
    }
    assert!(saw_note, "agents get the note live");
    assert!(
        frames.try_recv().is_err(),
        "the shopper's socket gets nothing"
    );
}

#[test]
fn queue_negativity_reads_negative_messages_and_the_escalation_only() {
    let e = |score| Escalation {
        id: "e".into(),
        conversation_id: "c".into(),
        reason: "asked_for_human".into(),
        status: EscalationStatus::Open,
        agent: None,
        sentiment_score: score,
        created_at: 0,
        claimed_at: None,
        resolved_at: None,
    };
    let m = |label: &str, score: f32| Message {
        id: "m".into(),
        conversation_id: "c".into(),
        seq: 1,
        role: Role::Shopper,
        author: None,
        client_id: None,
        text: "x".into(),
        intent: None,
        intent_confidence: None,
        sentiment: Some(label.into()),
        sentiment_score: Some(score),
        reply_to: None,
        created_at: 0,
    };
    // A confident positive is not negativity (the stored score is the winning label's).
    assert_eq!(queue_negativity(&e(None), &[m("positive", 0.97)]), None);
    assert_eq!(
        queue_negativity(&e(Some(0.2)), &[m("positive", 0.97), m("negative", 0.8)]),
        Some(0.8)
    );
    assert_eq!(
        queue_negativity(&e(Some(0.9)), &[m("negative", 0.6)]),
        Some(0.9)
    );
}

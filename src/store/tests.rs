use super::*;

async fn open(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    Store::connect(&StoreOptions::new(url))
        .await
        .expect("connect")
}

fn shopper(text: &str) -> NewMessage {
    NewMessage {
        role: Role::Shopper,
        client_id: Some("c1".into()),
        text: text.into(),
        intent: Some("track_order".into()),
        intent_confidence: Some(0.93),
        sentiment: Some("neutral".into()),
        sentiment_score: Some(0.6),
        ..Default::default()
    }
}

/// A shopper message and the bot's reply, the conversation staying with the bot.
async fn bot_turn(s: &Store, conversation_id: &str, said: &str, replied: &str) {
    s.record_turn(
        conversation_id,
        &shopper(said),
        Some(&bot(replied)),
        ConversationStatus::Bot,
        "{}",
    )
    .await
    .expect("turn");
}

fn bot(text: &str) -> NewMessage {
    NewMessage {
        role: Role::Bot,
        text: text.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn turns_are_stored_in_order_and_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir).await;
    let c = s
        .create_conversation(Some("cust-1"), "en", ConversationStatus::Bot, "{}")
        .await
        .expect("create");
    let (a, r) = s
        .record_turn(
            &c.id,
            &shopper("where is my order?"),
            Some(&bot("Which order?")),
            ConversationStatus::Bot,
            "{\"turns\":1}",
        )
        .await
        .expect("turn");
    let (b, none) = s
        .record_turn(
            &c.id,
            &shopper("4451-23"),
            None,
            ConversationStatus::Claimed,
            "{\"turns\":2}",
        )
        .await
        .expect("turn");
    assert!(none.is_none());
    let reply = r.expect("reply id");
    drop(s);
    // A new pool on the same file: everything is there (committed, not cached).
    let s = open(&dir).await;
    let msgs = s.messages(&c.id, 50).await.expect("messages");
    let ids: Vec<&str> = msgs.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, vec![a.as_str(), reply.as_str(), b.as_str()]);
    assert_eq!(
        msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(msgs[1].reply_to.as_deref(), Some(a.as_str()));
    assert_eq!(msgs[0].intent_confidence, Some(0.93));
    let conv = s.conversation(&c.id).await.expect("get").expect("exists");
    assert_eq!(
        (conv.status.as_str(), conv.state.as_str()),
        ("claimed", "{\"turns\":2}")
    );
    // The last N, oldest first.
    let last = s.messages(&c.id, 2).await.expect("messages");
    assert_eq!(last.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert!(matches!(
        s.record_turn("nope", &shopper("x"), None, ConversationStatus::Bot, "{}")
            .await,
        Err(StoreError::NoConversation(_))
    ));
}

#[tokio::test]
async fn escalations_claim_once_resolve_and_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir).await;
    let c = s
        .create_conversation(None, "en", ConversationStatus::Waiting, "{}")
        .await
        .expect("create");
    let e = s
        .escalate(&c.id, "complaint", Some(0.97))
        .await
        .expect("escalate");
    let c2 = s
        .create_conversation(None, "en", ConversationStatus::Waiting, "{}")
        .await
        .expect("create");
    let e2 = s
        .escalate(&c2.id, "asked_for_human", None)
        .await
        .expect("escalate");
    let open_ids: Vec<String> = s
        .escalations(Some(EscalationStatus::Open), 10)
        .await
        .expect("list")
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(
        open_ids,
        vec![e.id.clone(), e2.id.clone()],
        "longest waiting first"
    );
    // Two agents race for the same escalation: one wins.
    let (x, y) = tokio::join!(s.claim(&e.id, "ann"), s.claim(&e.id, "bob"));
    assert!(x.is_ok() != y.is_ok(), "{x:?} {y:?}");
    let claimed = s.escalation(&e.id).await.expect("get").expect("exists");
    assert_eq!(claimed.status, EscalationStatus::Claimed);
    assert!(claimed.claimed_at.is_some());
    let err = s.claim(&e.id, "cy").await.expect_err("already claimed");
    assert!(err.to_string().contains("already claimed"), "{err}");
    let (winner, loser) = if x.is_ok() {
        ("ann", "bob")
    } else {
        ("bob", "ann")
    };
    // Only the agent who claimed it may resolve it; the check is in the same UPDATE.
    assert!(matches!(
        s.resolve(&e.id, loser).await,
        Err(StoreError::ClaimedByOther { .. })
    ));
    let r = s.resolve(&e.id, winner).await.expect("resolve");
    assert_eq!(r.status, EscalationStatus::Resolved);
    assert!(s.resolve(&e.id, winner).await.is_err());
    assert_eq!(
        s.escalations(Some(EscalationStatus::Open), 10)
            .await
            .expect("list")
            .len(),
        1
    );
    assert_eq!(s.escalations(None, 10).await.expect("list").len(), 2);
    assert!(matches!(
        s.claim("nope", "ann").await,
        Err(StoreError::NoEscalation(_))
    ));
}

#[tokio::test]
async fn feedback_and_relabels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir).await;
    let c = s
        .create_conversation(None, "en", ConversationStatus::Bot, "{}")
        .await
        .expect("create");
    let (m, r) = s
        .record_turn(
            &c.id,
            &shopper("I want my money back"),
            Some(&bot("Sure.")),
            ConversationStatus::Bot,
            "{}",
        )
        .await
        .expect("turn");
    s.add_helpful(&r.expect("reply"), false)
        .await
        .expect("helpful");
    s.relabel(&m, Some("get_refund"), None, "ann")
        .await
        .expect("relabel");
    s.relabel(&m, None, Some("negative"), "bob")
        .await
        .expect("relabel");
    let rl = s.relabels().await.expect("relabels");
    assert_eq!(rl.len(), 2);
    assert_eq!(rl[0].text, "I want my money back");
    assert_eq!(rl[0].intent.as_deref(), Some("get_refund"));
    assert_eq!(rl[1].sentiment.as_deref(), Some("negative"));
    assert!(matches!(
        s.relabel("nope", None, None, "x").await,
        Err(StoreError::NoMessage(_))
    ));
}

#[tokio::test]
async fn urls_memory_and_migrations() {
    assert!(matches!(
        Store::connect(&StoreOptions::new("postgres://x")).await,
        Err(StoreError::UnsupportedUrl(_))
    ));
    let s = Store::connect(&StoreOptions::new("sqlite::memory:"))
        .await
        .expect("memory");
    s.ping().await.expect("ping");
    // Reconnecting to a migrated file applies nothing twice.
    let dir = tempfile::tempdir().expect("tempdir");
    let a = open(&dir).await;
    a.create_conversation(None, "en", ConversationStatus::Bot, "{}")
        .await
        .expect("create");
    drop(a);
    let b = open(&dir).await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations")
        .fetch_one(&b.pool)
        .await
        .expect("count");
    assert_eq!(n, MIGRATIONS.len() as i64);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&b.pool)
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn a_turn_with_an_escalation_is_one_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir).await;
    let c = s
        .create_conversation(None, "en", ConversationStatus::Bot, "{}")
        .await
        .expect("create");
    assert!(s.open_escalation(&c.id).await.expect("query").is_none());
    let ids = s
        .write_turn(
            &c.id,
            &TurnWrite {
                shopper: Some(&shopper("I am furious")),
                reply: Some(&bot("A person will join.")),
                status: ConversationStatus::Waiting,
                state: "{\"s\":1}",
                escalation: Some(("complaint", Some(0.97))),
            },
        )
        .await
        .expect("turn");
    let e = ids.escalation.expect("escalation");
    assert_eq!(
        (e.reason.as_str(), e.status.as_str()),
        ("complaint", "open")
    );
    assert_eq!(
        s.open_escalation(&c.id).await.expect("q").map(|x| x.id),
        Some(e.id.clone())
    );
    let reply = s
        .message(&ids.reply.expect("reply"))
        .await
        .expect("q")
        .expect("stored");
    assert_eq!(reply.reply_to, ids.shopper);
    // A failing turn (unknown conversation) stores nothing, escalation included.
    let before = s.escalations(None, 100).await.expect("list").len();
    assert!(s
        .write_turn(
            "missing",
            &TurnWrite {
                shopper: Some(&shopper("x")),
                reply: None,
                status: ConversationStatus::Waiting,
                state: "{}",
                escalation: Some(("complaint", None)),
            },
        )
        .await
        .is_err());
    assert_eq!(s.escalations(None, 100).await.expect("list").len(), before);
    s.resolve(&e.id, "alex").await.expect("resolve");
    assert!(s.open_escalation(&c.id).await.expect("q").is_none());
}

#[tokio::test]
async fn secrets_are_made_once_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir).await;
    let a = s.secret("k", &[], || "first".into()).await.expect("secret");
    let b = s
        .secret("k", &[], || "second".into())
        .await
        .expect("secret");
    assert_eq!((a.as_str(), b.as_str()), ("first", "first"));
    drop(s);
    let s = open(&dir).await;
    assert_eq!(
        s.secret("k", &[], || "third".into()).await.expect("secret"),
        "first"
    );
    // A newer key retires the old one: it is gone from the database.
    assert_eq!(
        s.secret("k2", &["k"], || "fresh".into())
            .await
            .expect("secret"),
        "fresh"
    );
    assert_eq!(
        s.secret("k", &[], || "remade".into())
            .await
            .expect("secret"),
        "remade",
        "the retired secret was deleted"
    );
}

#[tokio::test]
async fn a_failed_write_rolls_back_replaces_the_connection_and_the_next_write_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir).await;
    let c = s
        .create_conversation(None, "en", ConversationStatus::Bot, "{}")
        .await
        .expect("create");
    assert!(s.check_writable().await.ok);
    // A database that may not grow (as on a full disk): SQLITE_FULL inside the transaction.
    let mut w = s.begin_write().await.expect("begin");
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(w.conn())
        .await
        .expect("page_count");
    // `pages` is an integer the database just returned: no injection.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "PRAGMA max_page_count = {pages}"
    )))
    .execute(w.conn())
    .await
    .expect("limit");
    let big = "x".repeat(64 * 1024);
    let r = insert_message(
        w.conn(),
        &c.id,
        &NewMessage {
            role: Role::Shopper,
            text: big,
            ..NewMessage::default()
        },
        now_ms(),
    )
    .await;
    assert!(r.is_err(), "the database is full");
    let err = w.finish(r).await.expect_err("no commit");
    assert!(err.to_string().to_lowercase().contains("full"), "{err}");
    // Not ready while the last write failed, and says why.
    let w = s.check_writable().await;
    assert!(
        !w.ok && w.reason.as_deref().is_some_and(|r| r.contains("full")),
        "{w:?}"
    );
    assert_eq!(w.connections_replaced, 1);
    // The fresh connection has no limit: the next turn commits and is readable elsewhere.
    let ids = s
        .write_turn(
            &c.id,
            &TurnWrite {
                shopper: Some(&NewMessage {
                    role: Role::Shopper,
                    text: "hello again".into(),
                    ..NewMessage::default()
                }),
                reply: None,
                status: ConversationStatus::Bot,
                state: "{}",
                escalation: None,
            },
        )
        .await
        .expect("commits");
    let m = s
        .message(ids.shopper.as_deref().expect("id"))
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(m.text, "hello again");
    assert_eq!(
        s.messages(&c.id, 10).await.expect("read").len(),
        1,
        "nothing half-written"
    );
    assert!(
        s.check_writable().await.ok,
        "a good write since the failure"
    );
}

#[tokio::test]
async fn a_write_dropped_half_way_rolls_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir).await;
    let c = s
        .create_conversation(None, "en", ConversationStatus::Bot, "{}")
        .await
        .expect("create");
    {
        let mut w = s.begin_write().await.expect("begin");
        set_state(
            w.conn(),
            &c.id,
            ConversationStatus::Waiting,
            "{\"x\":1}",
            now_ms(),
        )
        .await
        .expect("update");
        // Dropped without finish: a cancelled request.
    }
    let after = s.conversation(&c.id).await.expect("read").expect("c");
    assert_eq!(after.status, ConversationStatus::Bot);
    s.set_state(&c.id, ConversationStatus::Waiting, "{}")
        .await
        .expect("the writer works");
}

#[tokio::test]
async fn notes_are_stored_per_conversation_oldest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir).await;
    let c = s
        .create_conversation(None, "en", ConversationStatus::Waiting, "{}")
        .await
        .expect("create");
    let other = s
        .create_conversation(None, "en", ConversationStatus::Waiting, "{}")
        .await
        .expect("create");
    let a = s
        .add_note(&c.id, "ann", "called the carrier")
        .await
        .expect("note");
    let b = s
        .add_note(&c.id, "bob", "refund approved")
        .await
        .expect("note");
    s.add_note(&other.id, "ann", "elsewhere")
        .await
        .expect("note");
    let notes = s.notes(&c.id).await.expect("notes");
    assert_eq!(notes, vec![a.clone(), b]);
    assert_eq!(notes[0].agent, "ann");
    assert!(matches!(
        s.add_note("nope", "ann", "x").await,
        Err(StoreError::NoConversation(_))
    ));
    // Notes are not messages: the transcript the shopper resumes has none of them.
    assert!(s.messages(&c.id, 100).await.expect("messages").is_empty());
    // Committed: a new pool on the same file sees them.
    drop(s);
    let s = open(&dir).await;
    assert_eq!(s.notes(&c.id).await.expect("notes").len(), 2);
}

#[tokio::test]
async fn active_escalations_are_open_and_claimed_longest_waiting_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let c = s
            .create_conversation(None, "en", ConversationStatus::Waiting, "{}")
            .await
            .expect("create");
        ids.push(s.escalate(&c.id, "complaint", None).await.expect("esc").id);
    }
    s.claim(&ids[0], "ann").await.expect("claim");
    s.resolve(&ids[2], "ann").await.expect("resolve");
    let active = [EscalationStatus::Open, EscalationStatus::Claimed];
    let got: Vec<String> = s
        .escalations_with(&active, 10)
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(got, vec![ids[0].clone(), ids[1].clone()]);
    let resolved = s
        .escalations_with(&[EscalationStatus::Resolved], 10)
        .await
        .expect("list");
    assert_eq!(resolved.len(), 1);
    assert_eq!(s.escalations_with(&[], 10).await.expect("all").len(), 3);
}

#[tokio::test]
async fn shopper_messages_newest_first_without_bot_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir).await;
    let c = s
        .create_conversation(None, "en", ConversationStatus::Bot, "{}")
        .await
        .expect("create");
    bot_turn(&s, &c.id, "first", "hi").await;
    s.record_turn(
        &c.id,
        &shopper("I want a person"),
        Some(&bot("A person from our team will join")),
        ConversationStatus::Waiting,
        "{}",
    )
    .await
    .expect("turn");
    let m = s.shopper_messages(&c.id, 10).await.expect("shopper");
    let texts: Vec<&str> = m.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, vec!["I want a person", "first"]);
}

#[tokio::test]
async fn a_customers_conversations_newest_first_with_summaries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir).await;
    let old = s
        .create_conversation(Some("c42"), "en", ConversationStatus::Bot, "{}")
        .await
        .expect("create");
    bot_turn(&s, &old.id, "where is my parcel?", "Which order?").await;
    bot_turn(&s, &old.id, "JP-12345", "On its way").await;
    let esc = s.escalate(&old.id, "unhelpful", None).await.expect("esc");
    let new = s
        .create_conversation(Some("c42"), "en", ConversationStatus::Waiting, "{}")
        .await
        .expect("create");
    s.create_conversation(Some("c43"), "en", ConversationStatus::Bot, "{}")
        .await
        .expect("someone else");

    let all = s
        .customer_conversations("c42", None, 10)
        .await
        .expect("history");
    assert_eq!(
        all.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec![new.id.as_str(), old.id.as_str()],
        "newest first"
    );
    let others = s
        .customer_conversations("c42", Some(&new.id), 10)
        .await
        .expect("history");
    assert_eq!(others.len(), 1);
    let o = &others[0];
    assert_eq!(o.first_message.as_deref(), Some("where is my parcel?"));
    assert_eq!(o.message_count, 4);
    assert_eq!(o.status, ConversationStatus::Bot);
    assert_eq!(o.escalation_id.as_deref(), Some(esc.id.as_str()));
    assert_eq!(all[0].message_count, 0);
    assert_eq!(all[0].first_message, None);
    assert!(s
        .customer_conversations("nobody", None, 10)
        .await
        .expect("none")
        .is_empty());
}

#[tokio::test]
async fn search_matches_text_and_customer_ids_literally_newest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir).await;
    let a = s
        .create_conversation(Some("vip_7"), "en", ConversationStatus::Bot, "{}")
        .await
        .expect("create");
    bot_turn(&s, &a.id, "I got 50% off the Linen shirt", "Nice").await;
    let b = s
        .create_conversation(Some("vipx7"), "en", ConversationStatus::Bot, "{}")
        .await
        .expect("create");
    s.record_turn(
        &b.id,
        &shopper("a linen SHIRT in blue? 50 percent"),
        None,
        ConversationStatus::Bot,
        "{}",
    )
    .await
    .expect("turn");

    // Case-insensitive, newest first.
    let hits = s.search("linen shirt", 50).await.expect("search");
    let texts: Vec<&str> = hits.iter().filter_map(|h| h.text.as_deref()).collect();
    assert_eq!(
        texts,
        vec![
            "a linen SHIRT in blue? 50 percent",
            "I got 50% off the Linen shirt"
        ]
    );
    assert_eq!(hits[0].role, Some(Role::Shopper));
    assert_eq!(hits[0].customer_id.as_deref(), Some("vipx7"));
    // `%` and `_` are literal, not wildcards.
    let pct = s.search("50%", 50).await.expect("search");
    assert_eq!(pct.len(), 1, "{pct:?}");
    assert_eq!(pct[0].conversation_id, a.id);
    let underscore = s.search("vip_", 50).await.expect("search");
    assert_eq!(underscore.len(), 1, "{underscore:?}");
    assert_eq!(underscore[0].conversation_id, a.id);
    assert_eq!(
        underscore[0].message_id, None,
        "a customer-id hit names no message"
    );
    assert_eq!(
        underscore[0].text.as_deref(),
        Some("I got 50% off the Linen shirt")
    );
    assert!(s.search("\\", 50).await.expect("search").is_empty());
    // The limit holds.
    assert_eq!(s.search("i", 2).await.expect("search").len(), 2);
}

#[test]
fn like_patterns_escape_wildcards() {
    assert_eq!(like_pattern("50%_a\\B"), "%50\\%\\_a\\\\b%");
}

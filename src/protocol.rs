//! The shopper websocket's frames (`docs/protocol.md`): JSON text frames tagged by `type`.
//! Shared by `conversation` (which builds the answers and events) and `server` (which sends them).

use serde::{Deserialize, Serialize};

/// client → server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Hello {
        #[serde(default)]
        session: Option<String>,
        #[serde(default)]
        customer_id: Option<String>,
        #[serde(default)]
        locale: Option<String>,
    },
    Message {
        #[serde(default)]
        id: Option<String>,
        text: String,
        /// The catalog product whose page the shopper is asking from ("Ask about this
        /// product"): "is it in stock?" is about it.
        #[serde(default)]
        product: Option<String>,
    },
    Feedback {
        message_id: String,
        helpful: bool,
    },
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Label {
    pub name: String,
    /// A probability for `nlu`, a cosine similarity for `faq`.
    pub confidence: f32,
    /// `nlu` (the intent head) or `faq` (the nearest FAQ question's intent, for messages the
    /// head found out of scope).
    pub source: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SentimentOut {
    pub label: String,
    pub score: f32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProductOut {
    pub id: String,
    pub title: String,
    pub price: Option<f64>,
    pub currency: Option<String>,
    pub url: Option<String>,
    pub image: Option<String>,
    pub category: Option<String>,
    /// False for a sold-out product a reply talks about (recommendations are in stock).
    pub in_stock: bool,
    pub score: f32,
}

/// A stored message as the shopper sees it in `welcome.history`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistoryItem {
    pub id: String,
    /// `shopper`, `bot` or `agent`.
    pub role: String,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// On shopper messages: the `id` the client gave it, so a reconnecting client knows which
    /// of its messages were stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub created_at: i64,
}

/// server → client.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        session: String,
        conversation_id: String,
        /// `bot`, `waiting`, `claimed` or `resolved`.
        status: String,
        history: Vec<HistoryItem>,
    },
    Typing,
    Reply {
        id: String,
        reply_to: Option<String>,
        text: String,
        intent: Option<Label>,
        sentiment: Option<SentimentOut>,
        products: Vec<ProductOut>,
        quick_replies: Vec<String>,
        escalated: bool,
        /// What the reply came from: `faq:<id>`, `intent:<name>`, `ask:<slot>`,
        /// `product:ask|find|goes_with`, `small_talk:<kind>`, `clarify`, `rephrase`,
        /// `escalation`, `recommend`.
        source: String,
        /// The slot the reply asks the shopper for (`order_number`), if any: a widget can hint
        /// at its format.
        #[serde(skip_serializing_if = "Option::is_none")]
        asks_for: Option<String>,
    },
    /// The shopper's message is stored; no bot reply follows (an agent has the conversation).
    Ack {
        id: String,
        reply_to: Option<String>,
    },
    AgentJoined {
        agent: String,
    },
    AgentMessage {
        id: String,
        text: String,
        agent: String,
    },
    Resolved,
    Error {
        code: ErrorCode,
        message: String,
        /// Sending the same frame again later may succeed (storage or the assistant was
        /// unavailable, or busy); nothing of the failed request was stored.
        retryable: bool,
    },
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    TooLong,
    RateLimited,
    Unauthorized,
    /// Storage or the models are unavailable right now; nothing was stored. Retry later.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLong => "too_long",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn retryable(self) -> bool {
        match self {
            ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal => true,
            ErrorCode::BadRequest | ErrorCode::TooLong | ErrorCode::Unauthorized => false,
        }
    }
}

impl ServerFrame {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerFrame {
        ServerFrame::Error {
            code,
            message: message.into(),
            retryable: code.retryable(),
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail; keep a valid frame if it ever does.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"cannot encode reply","retryable":true}"#
                .into()
        })
    }
}

/// Parses a client frame; the error says what was wrong in terms a client developer can act on.
pub fn parse(text: &str) -> Result<ClientFrame, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let kind = v
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or("a frame needs a string \"type\"")?
        .to_string();
    if !matches!(kind.as_str(), "hello" | "message" | "feedback") {
        return Err(format!(
            "unknown frame type \"{kind}\" (expected hello, message or feedback)"
        ));
    }
    serde_json::from_value(v).map_err(|e| format!("bad \"{kind}\" frame: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_frames() {
        assert_eq!(
            parse(r#"{"type":"message","id":"c1","text":"hi"}"#),
            Ok(ClientFrame::Message {
                id: Some("c1".into()),
                text: "hi".into(),
                product: None,
            })
        );
        assert!(matches!(
            parse(r#"{"type":"hello","session":null,"customer_id":null,"locale":"en"}"#),
            Ok(ClientFrame::Hello { session: None, .. })
        ));
        for (bad, why) in [
            ("not json", "not JSON"),
            ("[1,2]", "\"type\""),
            (r#"{"type":"dance"}"#, "unknown frame type"),
            (r#"{"type":"message"}"#, "missing field `text`"),
            (r#"{"type":"message","text":5}"#, "bad \"message\""),
            (
                r#"{"type":"feedback","message_id":"m","helpful":true,"x":1}"#,
                "unknown field",
            ),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn frames_serialise_as_documented() {
        let f = ServerFrame::error(ErrorCode::TooLong, "too long");
        assert_eq!(
            f.to_json(),
            r#"{"type":"error","code":"too_long","message":"too long","retryable":false}"#
        );
        assert_eq!(ServerFrame::Typing.to_json(), r#"{"type":"typing"}"#);
        assert_eq!(ServerFrame::Resolved.to_json(), r#"{"type":"resolved"}"#);
    }
}

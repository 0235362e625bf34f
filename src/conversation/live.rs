//! Who is connected to what: per-conversation broadcast channels (a shopper may have several
//! tabs open; agent replies reach all of them) and a per-conversation lock so a shopper's turn
//! and an agent's claim never overwrite each other's dialogue state. One process: servers that
//! share a PostgreSQL database will need the database's row locks and LISTEN/NOTIFY instead.
//! Only the conversation service publishes here, after its transaction committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::protocol::ServerFrame;
use crate::store::{Escalation, Message, Note};

pub struct Conversation {
    /// Held while a turn or an agent action reads and writes this conversation.
    pub lock: Arc<tokio::sync::Mutex<()>>,
    pub frames: broadcast::Sender<ServerFrame>,
}

/// What agents' live streams receive.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// A new escalation waits for an agent.
    Escalated {
        escalation: Escalation,
    },
    Claimed {
        escalation: Escalation,
    },
    Resolved {
        escalation: Escalation,
    },
    /// A message in a conversation that is escalated (waiting, claimed).
    Message {
        escalation_id: String,
        message: Message,
    },
    /// An agent's internal note: to the agents' stream only, never to a shopper's socket.
    Note {
        escalation_id: String,
        note: Note,
    },
}

pub struct Live {
    conversations: Mutex<HashMap<String, Arc<Conversation>>>,
    agents: broadcast::Sender<AgentEvent>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            conversations: Mutex::new(HashMap::new()),
            agents: broadcast::channel(1024).0,
        }
    }
}

impl Live {
    /// The conversation's entry, created on first use. Call [`Live::release`] when done.
    pub fn conversation(&self, id: &str) -> Arc<Conversation> {
        let mut map = self.conversations.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(Conversation {
                    lock: Arc::new(tokio::sync::Mutex::new(())),
                    frames: broadcast::channel(64).0,
                })
            })
            .clone()
    }

    /// Drops the entry once nobody listens or holds it, so the map only holds live conversations.
    pub fn release(&self, id: &str, entry: Arc<Conversation>) {
        let mut map = self.conversations.lock().unwrap_or_else(|p| p.into_inner());
        drop(entry);
        if let Some(e) = map.get(id) {
            if Arc::strong_count(e) == 1 && e.frames.receiver_count() == 0 {
                map.remove(id);
            }
        }
    }

    /// Sends a frame to every socket of the conversation (none listening is fine).
    pub fn send(&self, conversation_id: &str, frame: ServerFrame) {
        let map = self.conversations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(conversation_id) {
            let _ = c.frames.send(frame);
        }
    }

    pub fn agent_event(&self, e: AgentEvent) {
        let _ = self.agents.send(e);
    }

    pub fn agent_events(&self) -> broadcast::Receiver<AgentEvent> {
        self.agents.subscribe()
    }

    pub fn open_conversations(&self) -> usize {
        self.conversations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_while_used() {
        let live = Live::default();
        let a = live.conversation("c1");
        let rx = a.frames.subscribe();
        live.release("c1", a);
        assert_eq!(live.open_conversations(), 1, "a subscriber keeps it");
        live.send("c1", ServerFrame::Resolved);
        drop(rx);
        let a = live.conversation("c1");
        live.release("c1", a);
        assert_eq!(live.open_conversations(), 0);
    }
}

//! shopdesk: a self-hosted customer-service chatbot for online shops.
//!
//! One folder per capability; the binary (`src/main.rs`, `src/cli/`) maps commands onto them.

pub mod blocking;
pub mod canned;
pub mod config;
pub mod conversation;
pub mod dialogue;
pub mod faq;
pub mod nlu;
pub mod protocol;
pub mod recommend;
pub mod score;
pub mod secure;
pub mod server;
pub mod simd;
pub mod store;
pub mod table;
pub mod text;

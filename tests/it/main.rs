//! The one integration-test binary: real models, real data, the real `shopdesk` binary.

mod cli;
mod common;
mod conversations;
mod faq;
mod faults;
mod nlu;
mod recommend;
mod security;
mod server;

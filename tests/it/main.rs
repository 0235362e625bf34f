//! The one integration-test binary: real models, real data, the real `shopdesk` binary.

mod common;
mod nlu;

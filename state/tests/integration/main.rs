//! The state crate's integration tests, one binary (modules per area): the state machine's
//! rules and properties, the view store, the command decoder against damaged bytes and the poison
//! corpus.

mod decoder;
mod state_machine;
mod view;

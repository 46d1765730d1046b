//! Daniel Gultsch's unified-push draft, as Conversations and its forks speak it: a client
//! registers an app instance with `<register>` (`register.rs`), and each push goes to it as an IQ
//! `<push>` whose answer decides what the sender hears (`relay.rs`). A message the client cannot
//! take now is held in the store and offered again, in order, when the client is back
//! (`deliver.rs`). Its XML is in `wire.rs`.

pub mod deliver;
pub mod register;
pub mod relay;
pub mod wire;

pub use wire::NS;

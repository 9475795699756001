//! The cluster seed: the one object that gives a cluster its identity.
//!
//! Format (Tempo/Loki's, so their seeds and Mimir's two-field form are read as they are):
//! `{"UID":"<uuid>","created_at":"<RFC 3339>","version":{...}}`.
//!
//! Agreement, in [`SeedKeeper::agree`]: read; if absent, create-if-absent a fresh seed; a loser
//! reads the winner's. No stability wait, no gossip: agreement takes as long as the store takes
//! to answer. A seed whose content does not parse is corrupted and replaced by compare-and-swap
//! on the exact version read, so one replica wins the replacement and the others adopt its seed.
//! A failed call (network, 5xx, permission, timeout) is never taken as corruption: it is retried
//! with exponential backoff and jitter, logged when the state changes, not on every attempt.
//! Nothing here ever deletes anything.
//!
//! The identity outlives its object. The leader keeps the seed's exact bytes in the lease record,
//! and every frozen report carries the cluster ID and `createdAt`. A seed found absent or
//! corrupted, by a running replica or by one that just started and never saw it, is restored
//! from that memory ([`SeedKeeper::remembered`]) before a new identity is ever drawn; a new one
//! is drawn only when nothing of the cluster is left in the bucket.
//!
//! If everything was wiped while replicas ran, a newcomer may draw a second identity. The
//! cluster then converges at each replica's next [`SeedKeeper::check`]: the older seed
//! (earlier `createdAt`, then the smaller UID: [`Seed::precedes`]) wins. A replica holding it
//! writes it back over the younger one by compare-and-swap; a replica holding the younger one
//! adopts the older. So a replica's identity only ever moves to an older one, and the bucket's
//! seed is only ever replaced by an older one or restored.
//!
//! - `format`: the object: parsing (Tempo's, Loki's and Mimir's forms), what corruption is,
//!   generating a seed, which identity precedes;
//! - `keeper`: the protocol over the store: agreement, the check that guards it, and the
//!   memory a lost seed is restored from.

mod format;
mod keeper;

pub use format::{Corruption, Seed, DEFAULT_SEED_NAME, MAX_SEED_BYTES};
pub use keeper::{AgreeError, CheckOutcome, Memory, ReadOutcome, SeedKeeper};

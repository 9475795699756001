//! The `reporter` command line (feature `cli`): its flags, what each command does,
//! and the bucket inspection of `seed show` and `lease show`.
//!
//! Not part of the library's stable surface: the binary is its only user.

pub(crate) mod args;
mod command;
pub(crate) mod inspect;

pub use command::main;

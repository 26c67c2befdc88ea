//! Value types of the configuration, each parsed once from the text a person writes and
//! refused with a message that says what was expected: durations (`"90s"`, `"1h30m"`), IP
//! networks (`"10.0.0.0/8"`), MX host patterns (`"*.example.net"`), host names and socket
//! addresses.
//!
//! These modules are leaves: they depend on std and serde only, never on the rest of the
//! crate, so the config file, the engine and the operator commands can all use them without
//! a cycle. They know nothing of where a value appears in the file; the caller names the
//! setting in its error.

pub mod addr;
pub mod cidr;
pub mod client;
pub mod duration;
pub mod host;
pub mod mx_pattern;

pub use cidr::Cidr;
pub use duration::{format_duration, parse_duration};
pub use mx_pattern::MxPattern;

//! The AMF information model of nines and its YAML configuration.
//!
//! A config file is parsed and validated into an immutable [`Model`]; every later layer (engine,
//! simulator, drivers) works only with the validated model, so bad input is rejected once, here,
//! with errors that name the file, the line and the entity path.
//!
//! The loader works in three steps, one module each: `yaml` parses the text into a tree that
//! keeps positions, `decode` checks keys, types and values into raw structs (`raw`), and `build`
//! checks the relations between entities and produces the [`Model`]. All defaults live in
//! [`defaults`]; [`explain`] documents every key from them.

#![warn(missing_docs)]

mod build;
mod decode;
pub mod defaults;
pub mod duration;
mod entities;
mod error;
mod explain;
mod ids;
mod load;
mod raw;
mod summary;
mod yaml;

pub use entities::*;
pub use error::{ConfigError, ConfigWarning};
pub use explain::explain;
pub use ids::*;
pub use load::{load, Loaded};
pub use summary::summary;

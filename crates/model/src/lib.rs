//! The AMF information model of nines and its YAML configuration.
//!
//! A config file is parsed and validated into an immutable [`Model`]; every later layer (engine,
//! simulator, drivers) works only with the validated model, so bad input is rejected once, here,
//! with errors that name the file, the line and the entity path.

mod entities;
mod ids;

pub use entities::*;
pub use ids::*;

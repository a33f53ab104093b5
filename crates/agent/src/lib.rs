//! The node agent (in progress).
